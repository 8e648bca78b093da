//! The stack as template.yaml deploys it, made by the harness since nothing deploys the template
//! into moto: the worker's role and instance profile, the functions' settings (their
//! environment), and the ledger table, made in a region on its first use.

use super::FrontDoor;

impl FrontDoor {
    /// The worker's role and instance profile, as the template deploys them (IAM is global, so
    /// once per moto): RunInstances refuses a profile that does not exist.
    pub(super) async fn deploy_worker_identity(&self) {
        let trust = urlencoding::encode(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
        );
        let role = format!("{}-worker-role", crate::iam::STACK);
        let profile = crate::iam::WORKER_PROFILE;
        for body in [
            format!("Action=CreateRole&Version=2010-05-08&RoleName={role}&AssumeRolePolicyDocument={trust}"),
            format!("Action=CreateInstanceProfile&Version=2010-05-08&InstanceProfileName={profile}"),
            format!("Action=AddRoleToInstanceProfile&Version=2010-05-08&InstanceProfileName={profile}&RoleName={role}"),
        ] {
            // moto loads its IAM backend on the first IAM call, which under load can fail or
            // come late: tried again for a while; "already exists" means an earlier try landed.
            let mut last = String::new();
            let mut done = false;
            for _ in 0..40 {
                match self.moto_query("us-east-1", "iam", &body).await {
                    Ok(r) if r.status().is_success() => done = true,
                    Ok(r) => {
                        last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default());
                        done = last.contains("EntityAlreadyExists") || last.contains("LimitExceeded");
                    }
                    Err(e) => last = e.to_string(),
                }
                if done {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            assert!(
                done,
                "the harness could not create the worker's role and profile in moto: {last}"
            );
        }
    }

    /// The functions' settings as the template deploys them (the stack's topic, buckets, ledger,
    /// worker role and profile), the ledger table made: what every invocation gets, through the
    /// state machine or an EventBridge rule.
    pub async fn deployed_settings(&self, region: &str) -> ephemera_functions::Settings {
        // As the template deploys them: the stack's report topic is the default and the only one.
        let mut settings = self.settings.lock().unwrap().clone();
        let topic = crate::deployed::topic(region);
        settings.default_topic.get_or_insert(topic.clone());
        if settings.allowed_topics.is_empty() {
            settings.allowed_topics = vec![topic];
        }
        settings
            .artifact_bucket
            .get_or_insert(crate::iam::ARTIFACT_BUCKET.to_string());
        settings
            .export_bucket
            .get_or_insert(crate::iam::EXPORT_BUCKET.to_string());
        settings
            .worker_role_id
            .get_or_insert(crate::iam::WORKER_ROLE_ID.to_string());
        settings
            .ledger_table
            .get_or_insert(crate::iam::LEDGER_TABLE.to_string());
        settings
            .secret_prefix
            .get_or_insert(crate::iam::SECRET_PREFIX.to_string());
        settings
            .worker_log_group
            .get_or_insert_with(crate::iam::worker_log_group);
        // Every function's environment names the stack's worker profile and the stack
        // (template.yaml, Globals): instances are launched with it, and only those are terminated.
        settings
            .worker_instance_profile
            .get_or_insert_with(|| crate::iam::WORKER_PROFILE.to_string());
        settings
            .stack
            .get_or_insert_with(|| crate::iam::STACK.to_string());
        // launch-worker's own environment: the run role and the key its sessions are sealed
        // under (template.yaml, LaunchWorkerFunction).
        settings
            .run_role_arn
            .get_or_insert_with(crate::iam::run_role_arn);
        settings
            .task_token_key
            .get_or_insert_with(|| crate::iam::task_token_key(region));
        if settings.monthly_budget_usd == 0.0 {
            settings.monthly_budget_usd = crate::iam::MONTHLY_BUDGET_USD;
        }
        // AWS_LAMBDA_FUNCTION_MEMORY_SIZE, which Lambda sets from the template's MemorySize:
        // without it terminate-with-cost-report would price the invocations at 0 MB.
        if settings.lambda_memory_mb == 0 {
            settings.lambda_memory_mb = crate::iam::lambda_memory_mb();
        }
        self.ensure_ledger(region).await;
        settings
    }

    /// The ledger table of template.yaml (`LedgerTable`), in `region`.
    pub async fn ensure_ledger(&self, region: &str) {
        if self.ledgers.lock().unwrap().contains(region) {
            return;
        }
        let table = serde_json::json!({
            "TableName": crate::iam::LEDGER_TABLE,
            "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [
                {"AttributeName": "execution", "AttributeType": "S"},
                {"AttributeName": "month", "AttributeType": "S"}
            ],
            "KeySchema": [{"AttributeName": "execution", "KeyType": "HASH"}],
            "GlobalSecondaryIndexes": [{
                "IndexName": "by-month",
                "KeySchema": [{"AttributeName": "month", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"}
            }]
        });
        let created = self
            .http
            .post(format!("{}/", self.moto))
            .header("content-type", "application/x-amz-json-1.0")
            .header("x-amz-target", "DynamoDB_20120810.CreateTable")
            .header(
                "authorization",
                format!("AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/dynamodb/aws4_request, SignedHeaders=host, Signature=0"),
            )
            .body(table.to_string())
            .send()
            .await;
        // Created now, or by a call that raced this one (ResourceInUseException).
        if created.is_ok() {
            self.ledgers.lock().unwrap().insert(region.to_string());
        }
    }
}
