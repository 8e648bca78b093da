//! Systems Manager's Parameter Store calling KMS as the caller, which moto does not check: a
//! SecureString under the stack's task-token key needs `kms:Encrypt` to write and `kms:Decrypt` to
//! read, through SSM and for that parameter
//! (https://docs.aws.amazon.com/kms/latest/developerguide/services-parameter-store.html); and the
//! parameters' tags, for IAM's `ssm:resourceTag/…` conditions. SSM's rate is played in `route`
//! (`crate::throttle`); a `resolve:ssm:` ImageId is EC2's (`ec2`).

use super::FrontDoor;
use crate::iam::{Check, Principal, ACCOUNT};

impl FrontDoor {
    /// Parameter Store calls KMS as the caller: writing a SecureString under a customer
    /// managed key needs `kms:Encrypt` on it, reading one decrypted `kms:Decrypt`, each with
    /// `kms:ViaService` and the parameter's ARN as the `PARAMETER_ARN` encryption context
    /// (https://docs.aws.amazon.com/kms/latest/developerguide/services-parameter-store.html).
    /// moto checks neither; the stack's task-token key's policy is played here. The account's
    /// `aws/ssm` key admits every principal of the account, so nothing is checked for it.
    pub(super) async fn task_token_key_refused(
        &self,
        principal: &Principal,
        region: &str,
        action: &str,
        bytes: &[u8],
    ) -> Option<String> {
        let input: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        let key = crate::iam::task_token_key(region);
        let (use_, names): (&str, Vec<String>) = match action {
            "ssm:PutParameter"
                if input["Type"] == "SecureString" && input["KeyId"].as_str() == Some(&key) =>
            {
                ("kms:Encrypt", vec![input["Name"].as_str()?.to_string()])
            }
            "ssm:GetParameter" if input["WithDecryption"] == true => {
                ("kms:Decrypt", vec![input["Name"].as_str()?.to_string()])
            }
            "ssm:GetParameters" if input["WithDecryption"] == true => (
                "kms:Decrypt",
                input["Names"]
                    .as_array()?
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect(),
            ),
            _ => return None,
        };
        for name in names {
            if use_ == "kms:Decrypt"
                && self.parameter_key(region, &name).await.as_deref() != Some(&key)
            {
                continue;
            }
            let name = if name.starts_with('/') {
                name
            } else {
                format!("/{name}")
            };
            let check = Check::new(use_, key.clone())
                .with("kms:ViaService", format!("ssm.{region}.amazonaws.com"))
                .with(
                    "kms:EncryptionContext:PARAMETER_ARN",
                    format!("arn:aws:ssm:{region}:{ACCOUNT}:parameter{name}"),
                );
            let policies = self.policies_for(region);
            if let Err(reason) = policies.authorize_key("TaskTokenKey", principal, region, &check) {
                return Some(reason);
            }
        }
        None
    }

    /// The key a SecureString parameter is encrypted under (moto keeps the request's KeyId).
    async fn parameter_key(&self, region: &str, name: &str) -> Option<String> {
        let filter = serde_json::json!([{"Key": "Name", "Option": "Equals", "Values": [name]}]);
        let body = self
            .moto_json(
                region,
                "ssm",
                "AmazonSSM.DescribeParameters",
                serde_json::json!({ "ParameterFilters": filter }),
            )
            .await?;
        body["Parameters"][0]["KeyId"].as_str().map(str::to_string)
    }

    /// A parameter's tags as moto keeps them; none when it does not exist.
    pub(super) async fn parameter_tags(&self, region: &str, name: &str) -> Vec<(String, String)> {
        let body = self
            .moto_json(
                region,
                "ssm",
                "AmazonSSM.ListTagsForResource",
                serde_json::json!({"ResourceType": "Parameter", "ResourceId": name}),
            )
            .await
            .unwrap_or_default();
        body["TagList"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| Some((t["Key"].as_str()?.into(), t["Value"].as_str()?.into())))
            .collect()
    }
}
