//! The cluster's ServiceAccount token issuer, discovered through the API server with the
//! controller's own credentials (I/O, thin; the chart grants only these two URLs). Its keys go
//! into every gateway config that needs them, so that replicas never fetch from the API server
//! and all of them verify with the same keys as the config they serve.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use serde_json::Value;
use tokio::sync::watch;

use super::Context;
use crate::api::JwkObject;
use crate::policy::config::ClusterIssuer;

const DISCOVERY: &str = "/.well-known/openid-configuration";
const JWKS: &str = "/openid/v1/jwks";
/// How often the issuer's keys are read again: the API server serves them from memory, and a new
/// signing key is published there before it signs (docs/service-to-service.md).
pub const REFRESH: Duration = Duration::from_secs(60);
/// A JWKS larger than this is refused.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// What the last discovery found: the issuer, or why there is none (the last good one is kept).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Discovered {
    pub issuer: Option<ClusterIssuer>,
    pub error: Option<String>,
}

/// The issuer from the discovery document and the JWKS, as the API server serves them.
pub fn parse(discovery: &str, jwks: &str) -> Result<ClusterIssuer, String> {
    let doc: Value = serde_json::from_str(discovery).map_err(|e| format!("{DISCOVERY} is not JSON: {e}"))?;
    let issuer =
        doc.get("issuer").and_then(Value::as_str).filter(|i| !i.is_empty()).ok_or_else(|| format!("{DISCOVERY} names no issuer"))?;
    if jwks.len() > MAX_JWKS_BYTES {
        return Err(format!("{JWKS} is larger than {MAX_JWKS_BYTES} bytes"));
    }
    let set: Value = serde_json::from_str(jwks).map_err(|e| format!("{JWKS} is not JSON: {e}"))?;
    let (usable, _) = crate::keys::parse_jwks(&set).map_err(|e| format!("{JWKS}: {e}"))?;
    if usable.is_empty() {
        return Err(format!("{JWKS} holds no key usable for verifying signatures"));
    }
    let keys = set["keys"].as_array().into_iter().flatten().filter_map(|k| k.as_object().cloned().map(JwkObject)).collect();
    Ok(ClusterIssuer { issuer: issuer.to_owned(), keys })
}

async fn get(client: &Client, path: &str) -> Result<String, String> {
    let req = http::Request::get(path).body(Vec::new()).map_err(|e| e.to_string())?;
    client.request_text(req).await.map_err(|e| format!("GET {path}: {e}"))
}

pub async fn discover(client: &Client) -> Result<ClusterIssuer, String> {
    let discovery = get(client, DISCOVERY).await?;
    let jwks = get(client, JWKS).await?;
    parse(&discovery, &jwks)
}

/// Reads the issuer once; wakes the gateway loop when what is known changed.
pub async fn refresh(ctx: &Arc<Context>) {
    let result = tokio::time::timeout(Duration::from_secs(10), discover(&ctx.client)).await.unwrap_or_else(|_| Err("timed out".into()));
    let changed = {
        let mut known = ctx.cluster_issuer.lock().expect("cluster issuer lock");
        let before = known.clone();
        match result {
            Ok(issuer) => {
                if known.issuer.as_ref() != Some(&issuer) {
                    tracing::info!(issuer = %issuer.issuer, keys = issuer.keys.len(), "the cluster's ServiceAccount issuer discovered");
                }
                *known = Discovered { issuer: Some(issuer), error: None }
            }
            Err(e) => known.error = Some(e),
        }
        if known.error != before.error
            && let Some(e) = &known.error
        {
            tracing::warn!(
                "the cluster's ServiceAccount issuer cannot be read ({e}); kubernetes issuers and token exchange keep its last keys, if any"
            );
        }
        *known != before
    };
    if changed {
        ctx.changed();
    }
}

/// Refreshes until `stop`.
pub async fn run(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => refresh(&ctx).await,
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::TestIssuer;

    #[test]
    fn the_issuer_and_its_keys_come_from_the_api_servers_documents() {
        let key = TestIssuer::new("https://kubernetes.default.svc.cluster.local", crate::api::SigningAlgorithm::RS256);
        let jwks = key.jwks().to_string();
        let doc = r#"{"issuer":"https://kubernetes.default.svc.cluster.local","jwks_uri":"https://10.0.0.1:6443/openid/v1/jwks"}"#;
        let issuer = parse(doc, &jwks).unwrap();
        assert_eq!(issuer.issuer, "https://kubernetes.default.svc.cluster.local");
        assert_eq!(issuer.keys.len(), 1);
        for (doc, jwks, why) in [
            ("{}", jwks.as_str(), "names no issuer"),
            ("not json", jwks.as_str(), "not JSON"),
            (doc, r#"{"keys":[]}"#, "no key usable"),
            (doc, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#, "no key usable"),
        ] {
            let e = parse(doc, jwks).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
