//! A job's container image (`job.image`) and the AMI that can run it. The agent runs the image
//! with the instance's own container runtime, so the AMI must have one: the ECS-optimized
//! Amazon Linux 2023 images do (docker), by their public SSM parameters, for arm64, x86_64 and,
//! with the NVIDIA driver and container toolkit, for GPU types. The image reaches the worker
//! as `exec --image` (and `--gpus` on a GPU type), added to `worker.args` at launch.

use crate::catalog::{self, Arch};
use crate::gpu;
use crate::job_secrets;
#[cfg(doc)]
use crate::runspec::JobSpec;
use crate::runspec::{FieldError, RunSpec};

const ECS: &str = "resolve:ssm:/aws/service/ecs/optimized-ami/amazon-linux-2023/";
/// The ECS-optimized Amazon Linux 2023 AMIs (docker, the AWS CLI to log in to ECR), by their
/// public SSM parameters.
pub const ECS_AL2023_X86_64: &str =
    "resolve:ssm:/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id";
/// The arm64 (Graviton) one.
pub const ECS_AL2023_ARM64: &str =
    "resolve:ssm:/aws/service/ecs/optimized-ami/amazon-linux-2023/arm64/recommended/image_id";
/// With the NVIDIA driver and container toolkit; x86_64 only, as every GPU type of the catalog.
pub const ECS_AL2023_GPU: &str =
    "resolve:ssm:/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id";

/// `worker.image: "auto"`: ephemera chooses the AMI ([`ami`]).
pub use crate::runspec::AUTO_IMAGE as AUTO;

/// The AMI the run's instances boot: `worker.image`, or with `"auto"` the ECS-optimized
/// Amazon Linux 2023 image for the candidates' architecture (one for them all, which the
/// RunSpec's rules hold), its GPU variant on GPU types ([`ecs_ami`]): a container runtime, the
/// AWS CLI, and on a GPU type the NVIDIA driver and container toolkit.
pub fn ami(spec: &RunSpec) -> String {
    if spec.worker.image != AUTO {
        return spec.worker.image.clone();
    }
    let arch = spec
        .worker
        .instance_types
        .iter()
        .find_map(|t| catalog::lookup(t))
        .map_or(Arch::X86_64, |i| i.arch);
    ecs_ami(arch, gpu_types(spec)).to_string()
}

/// The AMI with a container runtime for candidates of `arch`, with GPUs or not.
pub fn ecs_ami(arch: Arch, gpus: bool) -> &'static str {
    match (gpus, arch) {
        (true, _) => ECS_AL2023_GPU,
        (false, Arch::X86_64) => ECS_AL2023_X86_64,
        (false, Arch::Arm64) => ECS_AL2023_ARM64,
    }
}

/// What ephemera knows of a `worker.image`: an ECS-optimized image (its GPU variant or not),
/// Amazon Linux 2023's plain image (no container runtime), or nothing (an `ami-…` id, another
/// parameter: taken as given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Ecs { gpus: bool },
    NoRuntime,
    Unknown,
}

fn known(image: &str) -> Known {
    if let Some(variant) = image.strip_prefix(ECS) {
        return Known::Ecs {
            gpus: variant.starts_with("gpu/"),
        };
    }
    if image.starts_with("resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-") {
        return Known::NoRuntime;
    }
    Known::Unknown
}

/// Whether the run's candidates are GPU types (all of them: a mix is refused).
pub fn gpu_types(spec: &RunSpec) -> bool {
    spec.worker.instance_types.iter().any(|t| gpu::is_gpu(t))
}

/// The worker's arguments as launched: `worker.args`, with `--image <job.image>` (and
/// `--gpus` on GPU types) and a `--secret NAME=ARN` for each of `job.secrets` after `exec`.
/// ARNs only: the values are read on the instance, never put in user data.
pub fn worker_args(spec: &RunSpec) -> Vec<String> {
    let mut args = spec.worker.args.clone();
    if !spec.worker.is_job() {
        return args;
    }
    let mut added = vec![];
    if let Some(image) = spec.job_image() {
        added.extend(["--image".to_string(), image.to_string()]);
        if gpu_types(spec) {
            added.push("--gpus".into());
        }
    }
    for (name, arn) in spec.job_secrets() {
        added.extend(job_secrets::worker_arg(name, arn));
    }
    if let Some(r) = spec.job.as_ref().and_then(|j| j.retry.as_ref()) {
        let codes: Vec<String> = r.on_exit_codes.iter().map(i32::to_string).collect();
        added.extend([
            "--retry-on".to_string(),
            codes.join(","),
            "--retry-max".into(),
            r.max.to_string(),
            "--retry-backoff".into(),
            r.backoff_seconds.to_string(),
        ]);
    }
    args.splice(1..1, added);
    args
}

/// A reference as docker and podman take it: `[host[:port]/]path[:tag][@digest]`, lowercase
/// path, no spaces or control characters.
fn is_image_reference(r: &str) -> bool {
    let (name, _digest) = r.split_once('@').unwrap_or((r, ""));
    let path = name.rsplit_once('/').map_or(name, |(_, last)| last);
    let repo = path.split(':').next().unwrap_or(path);
    !r.is_empty()
        && r.len() <= 512
        && !repo.is_empty()
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@".contains(c))
        && !name.starts_with('/')
        && !name.ends_with('/')
}

/// `job.image` against the rest of the RunSpec, and the AMI against the candidates: a GPU AMI
/// on CPU types or a CPU AMI on GPU types is refused, naming `worker.image` and the image to
/// use; so is a mix of GPU and CPU types (one AMI serves them all).
pub fn check(spec: &RunSpec) -> Vec<FieldError> {
    let mut errs = vec![];
    let mut add = |field: &str, message: String| {
        errs.push(FieldError {
            field: field.into(),
            message,
        })
    };
    let w = &spec.worker;
    let gpus: Vec<&String> = w.instance_types.iter().filter(|t| gpu::is_gpu(t)).collect();
    let cpus: Vec<&String> = w
        .instance_types
        .iter()
        .filter(|t| !gpu::is_gpu(t))
        .collect();
    if !gpus.is_empty() && !cpus.is_empty() {
        add(
            "worker.instance_types",
            format!(
                "GPU types ({}) and CPU types ({}) cannot be candidates of one run: one AMI serves them all, and only a GPU AMI drives the GPUs",
                gpus.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                cpus.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        );
    }
    let arch = w
        .instance_types
        .iter()
        .find_map(|t| catalog::lookup(t))
        .map(|i| i.arch);
    match (known(&ami(spec)), arch) {
        (Known::Ecs { gpus: true }, _) if gpus.is_empty() && !cpus.is_empty() => add(
            "worker.image",
            format!(
                "the GPU AMI on CPU types ({}): use {}",
                cpus.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                ecs_ami(arch.unwrap_or(Arch::X86_64), false)
            ),
        ),
        (Known::Ecs { gpus: false } | Known::NoRuntime, _) if !gpus.is_empty() && cpus.is_empty() => add(
            "worker.image",
            format!(
                "GPU types ({}) need the GPU AMI (the NVIDIA driver and container toolkit): use {ECS_AL2023_GPU}",
                gpus.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ),
        (Known::NoRuntime, Some(arch)) if spec.job_image().is_some() => add(
            "worker.image",
            format!(
                "Amazon Linux 2023's plain AMI has no container runtime for job.image: use {}",
                ecs_ami(arch, !gpus.is_empty())
            ),
        ),
        _ => {}
    }
    if let Some(image) = spec.job_image() {
        if !is_image_reference(image) {
            add(
                "job.image",
                format!(
                    "'{image}' is not an image reference ([registry/]name[:tag][@digest], e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1)"
                ),
            );
        }
        if !w.is_job() {
            add(
                "job.image",
                "runs a job's command: worker.args must be `exec [options] -- <command>`".into(),
            );
        }
        if w.args
            .iter()
            .take_while(|a| *a != "--")
            .any(|a| a == "--image" || a == "--gpus")
        {
            add(
                "worker.args",
                "--image and --gpus come from job.image and the instance types; give them there"
                    .into(),
            );
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(types: &[&str], image: &str, job: Option<&str>) -> RunSpec {
        let mut v = json!({
            "run_id": "train-1",
            "worker": {
                "instance_types": types,
                "subnets": ["subnet-0a1b2c3d"],
                "image": image,
                "artifact": "s3://ephemera-artifacts/worker/ephemera-worker",
                "args": ["exec", "--outputs", "out", "--to", "s3://ephemera-export/runs/train-1/", "--", "python3", "train.py"]
            },
            "limits": {"max_runtime_seconds": 3600, "budget_usd": 50.0}
        });
        if let Some(j) = job {
            v["job"] = json!({"image": j});
        }
        serde_json::from_value(v).unwrap()
    }

    const ECR: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1";

    fn fields(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn auto_chooses_the_ecs_ami_of_the_candidates_architecture_and_its_gpu_variant() {
        for (types, want) in [
            (&["g5.xlarge", "g6.xlarge"][..], ECS_AL2023_GPU),
            (&["c7g.4xlarge"][..], ECS_AL2023_ARM64),
            (&["c6i.4xlarge", "m6i.4xlarge"][..], ECS_AL2023_X86_64),
        ] {
            let s = spec(types, AUTO, Some(ECR));
            assert_eq!(ami(&s), want, "{types:?}");
            assert!(check(&s).is_empty(), "{types:?}: {:?}", check(&s));
        }
        // An image given is the image launched.
        assert_eq!(
            ami(&spec(&["c7g.4xlarge"], ECS_AL2023_ARM64, None)),
            ECS_AL2023_ARM64
        );
    }

    #[test]
    fn a_gpu_run_launches_the_gpu_ami_and_hands_the_gpus_to_its_container() {
        let s = spec(&["g6.xlarge", "g5.xlarge"], ECS_AL2023_GPU, Some(ECR));
        assert_eq!(check(&s), vec![]);
        assert!(s.validate().is_ok(), "{:?}", s.validate());
        assert_eq!(
            worker_args(&s)[..5],
            ["exec", "--image", ECR, "--gpus", "--outputs"]
        );
        assert_eq!(ecs_ami(Arch::X86_64, true), ECS_AL2023_GPU);
    }

    #[test]
    fn the_instance_starts_the_worker_with_the_image_and_the_gpus() {
        use crate::userdata::{render, worker_command, WorkerLaunch};
        let s = spec(&["g5.xlarge"], ECS_AL2023_GPU, Some(ECR));
        let args = worker_args(&s);
        let script = render(&WorkerLaunch {
            region: "us-east-1",
            artifact: s.worker.artifact.as_str(),
            args: &args,
            run_id: &s.run_id,
            slot: 1,
            workers: 1,
            attempt: 1,
            heartbeat_seconds: 300,
            ssm_prefix: "/ephemera/runs/train-1",
            log_group: None,
            budget_seconds: None,
            run_session: false,
        });
        let command = worker_command(&script).unwrap();
        let dashes = command.iter().position(|a| a == "--").unwrap();
        let image = command.iter().position(|a| a == "--image").unwrap();
        assert_eq!(command[image + 1], ECR);
        assert!(
            command[..dashes].contains(&"--gpus".to_string()),
            "{command:?}"
        );
        assert_eq!(
            command[dashes + 1..],
            ["python3", "train.py"],
            "the command runs in the image"
        );
        // The ECS-optimized images lack the AWS CLI the bootstrap downloads with.
        assert!(script.contains("command -v aws >/dev/null || dnf install -y -q awscli-2"));
    }

    #[test]
    fn the_worker_is_told_each_secret_by_its_arn_never_its_value() {
        const SM: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:k-AbCdEf";
        let mut s = spec(&["c7g.4xlarge"], ECS_AL2023_ARM64, Some(ECR));
        s.job.as_mut().unwrap().secrets = [("API_KEY".to_string(), SM.to_string())].into();
        assert_eq!(
            worker_args(&s)[..6],
            [
                "exec",
                "--image",
                ECR,
                "--secret",
                &format!("API_KEY={SM}"),
                "--outputs"
            ]
        );
        // Secrets without an image: the command on the host gets them all the same.
        s.job.as_mut().unwrap().image = None;
        assert_eq!(
            worker_args(&s)[..3],
            ["exec", "--secret", &format!("API_KEY={SM}")]
        );
        assert_eq!(check(&s), vec![]);
    }

    #[test]
    fn the_worker_is_told_the_jobs_retry_policy() {
        let mut s = spec(&["c7g.4xlarge"], ECS_AL2023_ARM64, None);
        s.job = Some(crate::runspec::JobSpec {
            image: None,
            secrets: Default::default(),
            retry: Some(crate::runspec::JobRetry {
                on_exit_codes: vec![75, 137],
                max: 2,
                backoff_seconds: 30,
            }),
        });
        assert_eq!(
            worker_args(&s)[..7],
            [
                "exec",
                "--retry-on",
                "75,137",
                "--retry-max",
                "2",
                "--retry-backoff",
                "30"
            ]
        );
    }

    #[test]
    fn a_cpu_run_gets_the_image_without_gpus() {
        let s = spec(&["c7g.4xlarge"], ECS_AL2023_ARM64, Some(ECR));
        assert_eq!(check(&s), vec![]);
        assert_eq!(worker_args(&s)[..4], ["exec", "--image", ECR, "--outputs"]);
        // No job.image: the arguments as given.
        let plain = spec(&["c7g.4xlarge"], ECS_AL2023_ARM64, None);
        assert_eq!(worker_args(&plain), plain.worker.args);
    }

    #[test]
    fn a_gpu_ami_on_cpu_types_or_the_reverse_is_refused_naming_the_field() {
        let e = check(&spec(&["c7i.4xlarge"], ECS_AL2023_GPU, Some(ECR)));
        assert_eq!(fields(&e), ["worker.image"]);
        assert!(e[0].message.contains(ECS_AL2023_X86_64), "{e:?}");
        let e = check(&spec(&["g5.xlarge"], ECS_AL2023_X86_64, Some(ECR)));
        assert_eq!(fields(&e), ["worker.image"]);
        assert!(e[0].message.contains(ECS_AL2023_GPU), "{e:?}");
        let e = check(&spec(
            &["g5.xlarge", "c7i.4xlarge"],
            ECS_AL2023_GPU,
            Some(ECR),
        ));
        assert_eq!(fields(&e), ["worker.instance_types"]);
        // Through admission too.
        let errs = crate::admission::validate(&spec(&["c7i.4xlarge"], ECS_AL2023_GPU, Some(ECR)))
            .unwrap_err()
            .errors;
        assert!(errs.iter().any(|e| e.field == "worker.image"), "{errs:?}");
    }

    #[test]
    fn an_image_needs_an_ami_with_a_runtime_and_a_job_to_run() {
        let plain =
            "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64";
        let e = check(&spec(&["c7g.4xlarge"], plain, Some(ECR)));
        assert_eq!(fields(&e), ["worker.image"]);
        assert!(e[0].message.contains(ECS_AL2023_ARM64), "{e:?}");
        // Without an image the plain AMI is fine, and an AMI id is taken as given.
        assert_eq!(check(&spec(&["c7g.4xlarge"], plain, None)), vec![]);
        assert_eq!(
            check(&spec(&["c7g.4xlarge"], "ami-0123456789abcdef0", Some(ECR))),
            vec![]
        );
        let mut feature = spec(&["c7g.4xlarge"], ECS_AL2023_ARM64, Some(ECR));
        feature.worker.args = vec!["run".into()];
        assert_eq!(fields(&check(&feature)), ["job.image"]);
        let mut twice = spec(&["c7g.4xlarge"], ECS_AL2023_ARM64, Some(ECR));
        twice
            .worker
            .args
            .splice(1..1, ["--image".to_string(), "x".to_string()]);
        assert_eq!(fields(&check(&twice)), ["worker.args"]);
    }

    #[test]
    fn image_references_are_read_as_the_runtimes_read_them() {
        for good in [
            ECR,
            "python:3.12-slim",
            "public.ecr.aws/docker/library/python:3.12",
            "127.0.0.1:5000/ephemera/job:demo",
            "ghcr.io/org/job@sha256:0123abcd",
        ] {
            assert!(is_image_reference(good), "{good}");
        }
        for bad in ["", "a b", "x/", "/x", "train:1;rm -rf /", "a\nb"] {
            assert!(!is_image_reference(bad), "{bad:?}");
        }
        let e = check(&spec(&["c7g.4xlarge"], ECS_AL2023_ARM64, Some("a b")));
        assert_eq!(fields(&e), ["job.image"]);
    }
}
