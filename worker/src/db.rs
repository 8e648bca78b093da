//! Connection and the shared schema: the source table, the work queue, the validation findings
//! and the registry of runs (each run's output tables are in its own schema: `outputs`).
//!
//! Connections honour `sslmode` as libpq does (`disable`, `allow`/`prefer`, `require`,
//! `verify-ca`, `verify-full`) with rustls, and `sslrootcert` (or `--database-ca-file`) for the
//! CA bundle to verify against; without one, `verify-*` trust the system's roots and RDS's
//! CAs (built in). Without `sslmode`, a server on this machine gets `prefer` and any other
//! `verify-full` (libpq would say `prefer` for both). As in libpq, `require` with a CA file
//! verifies the chain (as `verify-ca`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::month::Month;

/// Binary COPY row types of a bar as the worker reads it: ts, open, high, low, close, volume.
pub const BAR_TYPES: [Type; 6] = [
    Type::TIMESTAMPTZ,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
];

/// Binary COPY row types of a source row: the pair, then a bar.
pub const SOURCE_TYPES: [Type; 7] = [
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
];

/// A SQL identifier, possibly schema-qualified, of plain letters, digits and underscores.
pub fn checked_ident(name: &str) -> Result<&str> {
    let ok = !name.is_empty()
        && name.split('.').count() <= 2
        && name
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if !ok {
        bail!("'{name}' is not a plain table name (letters, digits, _; optionally schema.table)");
    }
    Ok(name)
}

/// A pair's name as a SQL literal, for COPY (which takes no parameters): only the characters a
/// pair's name has.
pub fn pair_literal(pair: &str) -> Result<String> {
    if pair.is_empty()
        || pair.len() > 32
        || !pair
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-/.".contains(c))
    {
        bail!("'{pair}' is not a pair name this worker reads");
    }
    Ok(format!("'{pair}'"))
}

/// A recursive CTE `pairs (pair)` of the source's pairs, found by skipping along its (pair, ts)
/// index, one probe per pair, instead of reading every bar (`source` already checked).
fn pairs_cte(source: &str) -> String {
    format!(
        "pairs AS (
           SELECT min(pair) AS pair FROM {source}
           UNION ALL
           SELECT (SELECT min(s.pair) FROM {source} s WHERE s.pair > pairs.pair)
             FROM pairs WHERE pairs.pair IS NOT NULL)"
    )
}

/// The query of every (pair, month) with bars in the source, as
/// `SELECT DISTINCT pair, date_trunc('month', ts AT TIME ZONE 'UTC')::date` would find them but
/// through the (pair, ts) index: per pair, its first and last bar, then one probe per month in
/// between. The DISTINCT read and grouped every bar (seconds for ten million).
pub fn pair_months_sql(source: &str) -> Result<String> {
    let source = checked_ident(source)?;
    Ok(format!(
        "WITH RECURSIVE {},
         spans AS (SELECT pair,
                          (SELECT min(ts) FROM {source} b WHERE b.pair = pairs.pair) AS lo,
                          (SELECT max(ts) FROM {source} b WHERE b.pair = pairs.pair) AS hi
                     FROM pairs WHERE pair IS NOT NULL)
         SELECT s.pair, m::date AS month
           FROM spans s,
                generate_series(date_trunc('month', s.lo AT TIME ZONE 'UTC'),
                                date_trunc('month', s.hi AT TIME ZONE 'UTC'),
                                interval '1 month') AS m
          WHERE EXISTS (SELECT 1 FROM {source} b
                         WHERE b.pair = s.pair AND b.ts >= (m AT TIME ZONE 'UTC')
                           AND b.ts < ((m + interval '1 month') AT TIME ZONE 'UTC'))",
        pairs_cte(source)
    ))
}

/// The pairs with bars in `month`, as a SQL list (`('AUDUSD', 'EURUSD')`), or None when it has
/// none. A month's filter on `ts` alone cannot use the source's (pair, ts) index, so a query over
/// every pair of one month scanned every month's bars (twice per cross-pair partition: its inputs
/// and its read); with the pairs named, each is one range of that index.
pub async fn month_pairs(client: &Client, source: &str, month: &Month) -> Result<Option<String>> {
    let source = checked_ident(source)?;
    let rows = client
        .query(
            &format!(
                "WITH RECURSIVE {}
                 SELECT pair FROM pairs
                  WHERE pair IS NOT NULL
                    AND EXISTS (SELECT 1 FROM {source} b WHERE b.pair = pairs.pair AND {})",
                pairs_cte(source),
                month.filter("b.ts")
            ),
            &[],
        )
        .await
        .context("finding the month's pairs")?;
    if rows.is_empty() {
        return Ok(None);
    }
    let names = rows
        .iter()
        .map(|r| pair_literal(r.get(0)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(format!("({})", names.join(", "))))
}

/// How a connection protects itself, from `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// TLS if the server offers it, unverified (libpq's default; `allow` is taken as this).
    Prefer,
    /// TLS or nothing, unverified (verified as `VerifyCa` when a CA file is given).
    Require,
    /// TLS with the chain verified against the CA bundle, whatever name the server has.
    VerifyCa,
    /// TLS with the chain and the host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => bail!(
                "sslmode '{other}' is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ),
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A database URL split into what tokio-postgres reads and the TLS settings the worker
/// applies itself (tokio-postgres knows neither `verify-*` nor `sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL or `key=value` string for tokio-postgres, `sslmode` reduced to what it knows.
    pub config: String,
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

impl Target {
    /// Reads `sslmode` and `sslrootcert` from a `postgres://` URL's query or a libpq
    /// `key=value` string (values may be quoted: `password='a b\\'c'`).
    ///
    /// Without `sslmode`, a server on this machine (loopback or a Unix socket) gets libpq's
    /// `prefer`, and any other gets `verify-full`: libpq's `prefer` encrypts without checking
    /// whom it talks to, so a database across a network would take the password of whoever
    /// answers in its place. RDS's CAs are trusted beside the system's (see [`default_roots`]).
    pub fn parse(url: &str) -> Result<Target> {
        let mut mode = None;
        let mut root_cert = None;
        let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let (head, params, sep) = if is_url {
            match url.split_once('?') {
                Some((h, q)) => (h, q, "&"),
                None => (url, "", "&"),
            }
        } else {
            ("", url, " ")
        };
        let mut kept = vec![];
        let mut hosts: Vec<String> = if is_url { url_hosts(head) } else { vec![] };
        let items: Vec<(String, String, String)> = if is_url {
            params
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|item| {
                    let (k, v) = item.split_once('=').unwrap_or((item, ""));
                    let v = urlencoding::decode(v)
                        .with_context(|| format!("the URL's {k} is not valid percent-encoding"))?
                        .into_owned();
                    Ok((k.to_string(), v, item.to_string()))
                })
                .collect::<Result<_>>()?
        } else {
            key_values(params)?
        };
        for (k, v, item) in items {
            match k.as_str() {
                "sslmode" => mode = Some(SslMode::parse(&v)?),
                "sslrootcert" => root_cert = Some(PathBuf::from(v)),
                "host" | "hostaddr" => {
                    hosts = v.split(',').map(str::to_string).collect();
                    kept.push(item);
                }
                _ => kept.push(item),
            }
        }
        let mut mode = mode.unwrap_or(if hosts.iter().all(|h| is_local_host(h)) {
            SslMode::Prefer
        } else {
            SslMode::VerifyFull
        });
        if mode == SslMode::Require && root_cert.is_some() {
            mode = SslMode::VerifyCa;
        }
        kept.push(format!(
            "sslmode={}",
            match mode {
                SslMode::Disable => "disable",
                SslMode::Prefer => "prefer",
                _ => "require",
            }
        ));
        let config = if is_url {
            format!("{head}?{}", kept.join(sep))
        } else {
            kept.join(sep)
        };
        Ok(Target {
            config,
            mode,
            root_cert,
        })
    }

    /// The rustls connector for this mode.
    pub fn tls(&self) -> Result<MakeRustlsConnect> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let config = match self.mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
                .with_no_client_auth(),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = Arc::new(match &self.root_cert {
                    Some(path) => roots_from(path)?,
                    None => default_roots(),
                });
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .context("building the certificate verifier")?;
                let verifier: Arc<dyn ServerCertVerifier> = if self.mode == SslMode::VerifyCa {
                    Arc::new(AnyName(webpki))
                } else {
                    webpki
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }

    /// The error, with what to do about it when the cause is TLS or the server's TLS policy.
    fn explain(&self, e: tokio_postgres::Error) -> anyhow::Error {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        let hint = if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
            match &self.root_cert {
                None => format!(
                    "the server's certificate is not trusted: sslmode={} without a CA file trusts \
                     the public web roots only, which do not include private CAs such as RDS's; \
                     give the server's CA bundle with --database-ca-file (or sslrootcert= in the \
                     URL)",
                    self.mode.name()
                ),
                Some(p) => format!(
                    "the server's certificate does not verify against {} (sslmode={})",
                    p.display(),
                    self.mode.name()
                ),
            }
        } else if text.contains("no encryption") {
            format!(
                "the server refuses unencrypted connections (sslmode={}): use sslmode=require or \
                 verify-full",
                self.mode.name()
            )
        } else if text.contains("server does not support TLS") {
            format!(
                "sslmode={} needs TLS and the server does not offer it",
                self.mode.name()
            )
        } else {
            return anyhow::Error::new(e).context("connecting to the database");
        };
        anyhow::Error::new(e).context(format!("connecting to the database: {hint}"))
    }
}

/// AWS's bundle of RDS's certificate authorities (every region's, the 2019 ones and the G1
/// ones RDS has issued with since 2023): see `worker/certs/README.md` for where it came from.
const RDS_CA_BUNDLE: &[u8] = include_bytes!("../certs/rds-global-bundle.pem");

/// What `verify-*` trusts without a CA file: the system's roots (the instance's
/// `/etc/pki/tls/certs`, as libpq with `sslrootcert=system`), or Mozilla's when the system
/// offers none, and RDS's CAs, which no system store holds.
pub fn default_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(system.certs);
    if added == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let rds = CertificateDer::pem_slice_iter(RDS_CA_BUNDLE).filter_map(|c| c.ok());
    roots.add_parsable_certificates(rds);
    roots
}

/// Hosts of a `postgres://user:password@host:port,host2/db` URL's authority (port cut off).
fn url_hosts(head: &str) -> Vec<String> {
    let rest = head.split_once("://").map_or(head, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    hosts
        .split(',')
        .map(|h| {
            let h = urlencoding::decode(h).map_or_else(|_| h.to_string(), |d| d.into_owned());
            match h.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or("").to_string(),
                None => h.split(':').next().unwrap_or("").to_string(),
            }
        })
        .collect()
}

/// A host on this machine: no network between the worker and the server to trust.
fn is_local_host(host: &str) -> bool {
    host.is_empty()
        || host.starts_with('/')
        || host.starts_with('@')
        || host == "localhost"
        || host == "::1"
        || host.starts_with("127.")
}

/// libpq's `key = value` pairs: `(key, value unquoted, the pair as written)`. A value is a
/// word or a single-quoted string; a backslash escapes the character after it in either.
fn key_values(text: &str) -> Result<Vec<(String, String, String)>> {
    let mut out = vec![];
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            return Ok(out);
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if key.is_empty() || chars.next_if(|(_, c)| *c == '=').is_none() {
            bail!("the connection string's '{key}' has no '=' and value");
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let mut value = String::new();
        let mut closed = !quoted;
        while let Some((_, c)) = chars.next() {
            match c {
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                '\'' if quoted => {
                    closed = true;
                    break;
                }
                c if c.is_whitespace() && !quoted => break,
                c => value.push(c),
            }
        }
        if !closed {
            bail!("the connection string's '{key}' opens a quote it does not close");
        }
        let end = chars.peek().map_or(text.len(), |&(i, _)| i);
        out.push((key, value, text[start..end].trim_end().to_string()));
    }
}

/// Every certificate in a PEM bundle (RDS's holds one per region).
fn roots_from(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading the CA bundle {}", path.display()))?
    {
        let cert = cert.with_context(|| format!("a certificate in {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("a CA certificate in {}", path.display()))?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "no certificate in the CA bundle {}",
        path.display()
    );
    Ok(roots)
}

/// `prefer` and `require`: encrypted, the certificate not checked (as libpq), though the
/// handshake's signatures are.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name in the certificate may differ.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Whether a failed connect may succeed soon: the server is starting, or not listening yet.
fn retryable(e: &tokio_postgres::Error) -> bool {
    if let Some(db) = e.as_db_error() {
        return db.code() == &SqlState::CANNOT_CONNECT_NOW;
    }
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            use std::io::ErrorKind::*;
            matches!(
                io.kind(),
                ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | TimedOut
            )
        })
}

/// The URL with a CA bundle for `verify-*` (`--database-ca-file`), which wins over one in it.
pub fn with_root_cert(url: &str, ca_file: &Path) -> String {
    let path = ca_file.display().to_string();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}sslrootcert={}", urlencoding::encode(&path))
    } else {
        format!("{url} sslrootcert={path}")
    }
}

pub async fn connect(url: &str) -> Result<Client> {
    let target = Target::parse(url)?;
    let tls = target.tls()?;
    let mut last = None;
    // A server that just started may refuse for a moment; anything else fails at once.
    for _ in 0..50 {
        match tokio_postgres::connect(&target.config, tls.clone()).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::error!(error = %e, "database connection ended");
                    }
                });
                return Ok(client);
            }
            Err(e) if retryable(&e) => last = Some(e),
            Err(e) => return Err(target.explain(e)),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    match last {
        Some(e) => Err(target.explain(e)),
        None => bail!("connecting to the database: no attempt made"),
    }
}

/// Makes every earlier commit durable, those made with synchronous_commit off included: a commit
/// that waits for the log to reach disk flushes everything logged before it (the transaction
/// takes an id so that it writes a commit record to wait for).
pub async fn flush(client: &Client) -> Result<()> {
    client
        .batch_execute("BEGIN; SET LOCAL synchronous_commit = on; SELECT txid_current(); COMMIT;")
        .await
        .context("flushing the log")
}

/// Asks the server to cancel the statement a session to `url` is running (TLS as `connect`).
pub async fn cancel(url: &str, token: &tokio_postgres::CancelToken) -> Result<()> {
    token
        .cancel_query(Target::parse(url)?.tls()?)
        .await
        .context("sending a cancel request")
}

/// Creates the source table (if absent), the queue, the validation findings and the registry of
/// runs. Idempotent, and safe to run from several workers at once (one at a time under an
/// advisory lock: concurrent `CREATE … IF NOT EXISTS` of one name can fail). Each run's output
/// tables are created by `outputs::create`, in the run's own schema.
pub async fn init(client: &Client, source: &str) -> Result<()> {
    let source = checked_ident(source)?;
    let idx = format!("{}_pair_ts", source.replace('.', "_"));
    // One simple query: one implicit transaction, which the xact lock lasts for.
    let sql = format!(
        "SELECT pg_advisory_xact_lock(hashtext('ephemera.init'));
         CREATE SCHEMA IF NOT EXISTS ephemera;
         CREATE TABLE IF NOT EXISTS {source} (
             pair text NOT NULL, ts timestamptz NOT NULL,
             open double precision, high double precision, low double precision,
             close double precision, volume double precision);
         CREATE INDEX IF NOT EXISTS {idx} ON {source} (pair, ts);
         CREATE TABLE IF NOT EXISTS ephemera.partitions (
             run_id text NOT NULL, stage text NOT NULL, pair text NOT NULL, month date NOT NULL,
             rank integer NOT NULL DEFAULT 0,
             state text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'running', 'done', 'failed')),
             lease_owner text, lease_until timestamptz,
             attempts integer NOT NULL DEFAULT 0,
             rows_in bigint, rows_out bigint, quality jsonb, error text,
             updated_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (run_id, stage, pair, month));
         -- The claim walks a run's open partitions in its order and stops at the first it may
         -- take; done partitions leave this index, so it shrinks as the run advances.
         CREATE INDEX IF NOT EXISTS partitions_open
             ON ephemera.partitions (run_id, rank, pair, month, stage)
             WHERE state IN ('pending', 'running');
         -- A partition's earlier stages (the claim's wait, validate's and export's inputs).
         CREATE INDEX IF NOT EXISTS partitions_by_month
             ON ephemera.partitions (run_id, pair, month, rank);
         CREATE TABLE IF NOT EXISTS ephemera.validation (
             run_id text NOT NULL, pair text NOT NULL, month date NOT NULL,
             stage text NOT NULL, column_name text NOT NULL,
             rows bigint NOT NULL, nulls bigint NOT NULL, nulls_beyond_warm_up bigint NOT NULL,
             non_finite bigint NOT NULL, out_of_range bigint NOT NULL,
             min double precision, max double precision,
             PRIMARY KEY (run_id, pair, month, stage, column_name));
         CREATE TABLE IF NOT EXISTS ephemera.runs (
             run_id text PRIMARY KEY, schema_name text NOT NULL UNIQUE,
             created_at timestamptz NOT NULL DEFAULT now());"
    );
    client
        .batch_execute(&sql)
        .await
        .context("creating the schema")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_literal_has_only_a_pairs_characters() {
        assert_eq!(pair_literal("EURUSD").unwrap(), "'EURUSD'");
        assert!(pair_literal("x'; DROP TABLE t; --").is_err());
    }

    #[test]
    fn sslmode_and_root_cert_are_read_from_urls_and_key_values() {
        let t = Target::parse("postgres://u@localhost:5432/db").unwrap();
        assert_eq!(
            (t.config.as_str(), t.mode, t.root_cert),
            (
                "postgres://u@localhost:5432/db?sslmode=prefer",
                SslMode::Prefer,
                None
            )
        );
        let t = Target::parse(
            "postgresql://u:p@h/db?application_name=w&sslmode=verify-full&sslrootcert=%2Fetc%2Frds%20ca.pem",
        )
        .unwrap();
        assert_eq!(
            t.config,
            "postgresql://u:p@h/db?application_name=w&sslmode=require"
        );
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert_eq!(t.root_cert, Some(PathBuf::from("/etc/rds ca.pem")));
        let t =
            Target::parse("host=h port=5433 user=u password=p sslmode=verify-ca dbname=d").unwrap();
        assert_eq!(
            t.config,
            "host=h port=5433 user=u password=p dbname=d sslmode=require"
        );
        assert_eq!(t.mode, SslMode::VerifyCa);
        // As libpq: require with a CA file verifies the chain.
        let t = Target::parse(&with_root_cert(
            "postgres://h/db?sslmode=require",
            Path::new("/ca.pem"),
        ))
        .unwrap();
        assert_eq!(
            (t.mode, t.root_cert),
            (SslMode::VerifyCa, Some(PathBuf::from("/ca.pem")))
        );
        assert_eq!(
            Target::parse(&with_root_cert("host=h", Path::new("/ca.pem")))
                .unwrap()
                .root_cert,
            Some(PathBuf::from("/ca.pem"))
        );
        assert_eq!(
            Target::parse("postgres://h/db?sslmode=disable")
                .unwrap()
                .mode,
            SslMode::Disable
        );
        let e = Target::parse("postgres://h/db?sslmode=verify").unwrap_err();
        assert!(e.to_string().contains("verify-full"), "{e}");
    }

    #[test]
    fn without_sslmode_only_a_server_on_this_machine_goes_unverified() {
        let mode = |url: &str| Target::parse(url).unwrap().mode;
        for local in [
            "postgres://u@localhost/db",
            "postgres://u@127.0.0.1:5433/db",
            "postgres://u@[::1]:5433/db",
            "postgres://u@/db?host=/var/run/postgresql",
            "postgres://u@%2Ftmp%2Fpg/db",
            "host=/tmp/pg port=5433 user=u",
            "host=localhost,127.0.0.2 user=u",
        ] {
            assert_eq!(mode(local), SslMode::Prefer, "{local}");
        }
        for remote in [
            "postgres://u:p@db.abc.eu-west-1.rds.amazonaws.com:5432/db",
            "postgres://u@localhost,10.0.0.5/db",
            "postgres://u@[2001:db8::1]/db",
            "postgres://u@localhost/db?host=10.0.0.5",
            "host=10.0.0.5 user=u",
        ] {
            assert_eq!(mode(remote), SslMode::VerifyFull, "{remote}");
        }
        // Asked for, `prefer` stays `prefer` anywhere.
        assert_eq!(mode("host=10.0.0.5 sslmode=prefer"), SslMode::Prefer);
    }

    #[test]
    fn key_values_read_quotes_and_escapes_as_libpq() {
        let t = Target::parse(r"host = h password='a b\'c' user=u\ v sslmode=verify-full").unwrap();
        assert_eq!(t.mode, SslMode::VerifyFull);
        let config: tokio_postgres::Config = t.config.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(config.get_user(), Some("u v"));
        for bad in ["host", "password='open", "host=h =x"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn verify_trusts_rds_beside_the_system() {
        let rds = CertificateDer::pem_slice_iter(RDS_CA_BUNDLE)
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        // AWS's global bundle: one or more CAs for every region, the G1 ones among them.
        assert!(rds.len() > 100, "{}", rds.len());
        let roots = default_roots();
        assert!(roots.len() > rds.len(), "{} roots", roots.len());
        let text = String::from_utf8_lossy(RDS_CA_BUNDLE);
        assert!(text.contains("-----BEGIN CERTIFICATE-----"));
    }
}
