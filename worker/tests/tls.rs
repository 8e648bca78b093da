//! TLS to PostgreSQL, as RDS with `rds.force_ssl=1` wants it: a server of its own with
//! `ssl=on`, a certificate from a CA made here, and a `pg_hba.conf` that takes `hostssl` only.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ephemera_tests::postgres::{start, Postgres, Setup};
use ephemera_worker::stage::Stage;
use ephemera_worker::{db, run};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA, and a server certificate it signed for 127.0.0.1 and localhost: (CA PEM, cert, key).
fn pki() -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ephemera test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = leaf.signed_by(&key, &*ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// The server with TLS on and plaintext refused, and the CA file that verifies it.
fn tls_server() -> (Postgres, PathBuf) {
    let (ca, cert, key) = pki();
    let hba =
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n";
    let pg = start(&Setup {
        files: vec![
            ("server.crt".into(), cert.into_bytes()),
            ("server.key".into(), key.into_bytes()),
            ("pg_hba.conf".into(), hba.into()),
        ],
        settings: [
            ("ssl", "on"),
            ("ssl_cert_file", "$DIR/server.crt"),
            ("ssl_key_file", "$DIR/server.key"),
            ("hba_file", "$DIR/pg_hba.conf"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec(),
    });
    let ca_file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "tls-ca-{}-{}.pem",
        std::process::id(),
        pg.port
    ));
    std::fs::write(&ca_file, ca).unwrap();
    (pg, ca_file)
}

async fn encrypted(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn sslmode_is_honoured_against_a_server_that_takes_tls_only() {
    let (pg, ca_file) = tls_server();
    let url = pg.database("tls");

    // require: encrypted, the certificate not checked.
    let c = db::connect(&format!("{url}?sslmode=require"))
        .await
        .unwrap();
    assert!(encrypted(&c).await);

    // verify-full with the CA bundle (the option, or sslrootcert in the URL), by IP and by name.
    let full = db::with_root_cert(&format!("{url}?sslmode=verify-full"), &ca_file);
    assert!(encrypted(&db::connect(&full).await.unwrap()).await);
    let by_name = format!(
        "postgres://postgres@localhost:{}/tls?sslmode=verify-full&sslrootcert={}",
        pg.port,
        urlencoding::encode(ca_file.to_str().unwrap())
    );
    assert!(encrypted(&db::connect(&by_name).await.unwrap()).await);
    let kv = format!(
        "host=127.0.0.1 port={} user=postgres dbname=tls sslmode=verify-ca sslrootcert={}",
        pg.port,
        ca_file.display()
    );
    assert!(encrypted(&db::connect(&kv).await.unwrap()).await);

    // verify-full without the CA: refused at once (no retrying), saying what to do.
    let t0 = Instant::now();
    let e = db::connect(&format!("{url}?sslmode=verify-full"))
        .await
        .unwrap_err();
    let text = format!("{e:#}");
    assert!(text.contains("--database-ca-file"), "{text}");
    assert!(text.contains("not trusted"), "{text}");
    // Retrying would take 50 attempts 200 ms apart (db::connect): half of that tells the two
    // apart on any machine, where a fixed 2 s measured one handshake on a quiet one.
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    // verify-full against another CA: refused too.
    let (other_ca, _, _) = pki();
    let other = ca_file.with_extension("other.pem");
    std::fs::write(&other, other_ca).unwrap();
    let e = db::connect(&db::with_root_cert(
        &format!("{url}?sslmode=verify-full"),
        &other,
    ))
    .await
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("does not verify against"),
        "{e:#}"
    );

    // Plaintext: the server refuses it.
    let e = db::connect(&format!("{url}?sslmode=disable"))
        .await
        .unwrap_err();
    let text = format!("{e:#}");
    assert!(text.contains("refuses unencrypted connections"), "{text}");
    assert!(text.contains("no encryption"), "{text}");

    // The default (prefer) takes TLS when offered.
    assert!(encrypted(&db::connect(&url).await.unwrap()).await);
}

#[tokio::test]
async fn the_worker_runs_over_verified_tls() {
    let (pg, ca_file) = tls_server();
    let url = pg.database("tls_run");
    let full = db::with_root_cert(&format!("{url}?sslmode=verify-full"), &ca_file);
    let client = db::connect(&full).await.unwrap();
    db::init(&client, "bars_1m").await.unwrap();
    client
        .batch_execute(
            "INSERT INTO bars_1m
             SELECT 'EURUSD', ts, 1.1, 1.1002, 1.0998, 1.1 + 0.0001 * sin(n), 10
               FROM generate_series(1, 5000) n,
                    LATERAL (SELECT '2023-04-03Z'::timestamptz + n * interval '1 minute' AS ts) t",
        )
        .await
        .unwrap();
    let summary = run::run(run::Options {
        database_url: full.clone(),
        source: "bars_1m".into(),
        stages: vec![Stage::Indicators, Stage::Regression],
        concurrency: 2,
        worker_id: "tls".into(),
        run_id: "tls".into(),
        lease_seconds: 600,
        max_attempts: 3,
        export: None,
        stop: Default::default(),
        progress: indicatif::ProgressBar::hidden(),
        params: Default::default(),
    })
    .await
    .unwrap();
    assert_eq!((summary.partitions_done, summary.rows_out), (2, 10_000));

    // The binary: --database-ca-file with verify-full works; without it, a clear refusal.
    let status = |ca: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ephemera-worker"));
        cmd.args([
            "status",
            "--database-url",
            &format!("{url}?sslmode=verify-full"),
        ]);
        if ca {
            cmd.arg("--database-ca-file").arg(&ca_file);
        }
        cmd.output().unwrap()
    };
    let ok = status(true);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("done"));
    let refused = status(false);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--database-ca-file"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
