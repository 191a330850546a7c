//! `AuthPolicy`: which routes of a gateway need which tokens and claims.
// kube's repeated `printcolumn(type_ = ..)` arguments look like duplicated attributes to clippy.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Duration;

pub const HOST_PATTERN: &str = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
pub const HEADER_NAME_PATTERN: &str = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$";
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A dotted claim path: no empty segments.
pub const CLAIM_PATTERN: &str = r"^[^.]+(\.[^.]+)*$";
/// `namespace/serviceaccount` or `namespace/*`.
pub const SERVICE_ACCOUNT_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/([a-z0-9]([-.a-z0-9]*[a-z0-9])?|\*)$";

pub(super) fn default_gateway() -> String {
    "default".to_owned()
}

pub(super) fn is_default_gateway(g: &str) -> bool {
    g == "default"
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Declares which requests to a gateway need a token, whose tokens are trusted and which claims
/// a caller must carry.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "AuthPolicy",
    namespaced,
    status = "AuthPolicyStatus",
    shortname = "authpol",
    category = "portcullis",
    doc = "AuthPolicy declares which routes of a gateway require a JWT, whose tokens are trusted and which claims a caller must carry.",
    printcolumn(name = "Gateway", type_ = "string", json_path = ".spec.gateway"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRefs[*].name"),
    printcolumn(name = "Accepted", type_ = "string", json_path = r#".status.conditions[?(@.type=="Accepted")].status"#),
    printcolumn(name = "Programmed", type_ = "string", json_path = r#".status.conditions[?(@.type=="Programmed")].status"#),
    printcolumn(name = "Enforced", type_ = "string", json_path = r#".status.conditions[?(@.type=="Enforced")].status"#),
    printcolumn(name = "Audit", type_ = "string", json_path = ".status.auditSummary"),
    printcolumn(name = "Reason", type_ = "string", priority = 1, json_path = r#".status.conditions[?(@.type=="Accepted")].reason"#),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.rules.all(r, has(r.public) && r.public) || (has(self.issuers) && size(self.issuers) > 0) || has(self.signIn)",
        "message": "rules that are not public need at least one entry in issuers (or signIn)"
    },
    {
        "rule": "!has(self.targetRefs) || size(self.targetRefs) == 0 || !has(self.hosts) || size(self.hosts) == 0",
        "message": "targetRefs and hosts are exclusive: a policy attached to Gateway API objects takes its hosts from them"
    },
    {
        "rule": "self.rules.all(r, has(r.match)) || (has(self.targetRefs) && size(self.targetRefs) > 0)",
        "message": "a rule without match covers its whole target, so it needs targetRefs"
    }
]))]
pub struct AuthPolicySpec {
    /// Name of the gateway whose configuration this policy joins.
    #[serde(default = "default_gateway", skip_serializing_if = "is_default_gateway")]
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(max = 63))]
    // Defaulted by the API server too, so that the GATEWAY column is never blank.
    #[schemars(extend("default" = "default"))]
    pub gateway: String,

    /// Hosts this policy applies to: exact names or `*.suffix` wildcards, lowercase, no port.
    /// Empty means every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = HOST_PATTERN), length(max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub hosts: Vec<String>,

    /// Gateway API objects this policy attaches to (GEP-713), in its own namespace: HTTPRoutes
    /// and GRPCRoutes (a `sectionName` names one rule), or Gateways (a `sectionName` names one
    /// listener; the policy is the default for routes without one of their own). The hosts and
    /// paths come from the targets; rules may omit `match` or narrow it. Exclusive with `hosts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(a, self.exists_one(b, a.kind == b.kind && a.name == b.name && (has(a.sectionName) ? a.sectionName : '') == (has(b.sectionName) ? b.sectionName : '')))",
        "message": "a target is listed twice"
    }]))]
    pub target_refs: Vec<PolicyTargetRef>,

    /// Token issuers whose tokens are trusted on this policy's routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub issuers: Vec<IssuerSpec>,

    /// Where to read the token, in order of preference. Default: `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub token_sources: Vec<TokenSource>,

    /// Routes, each with what a request must satisfy. Across policies the most specific match wins;
    /// see docs/architecture.md for the precedence.
    #[schemars(length(min = 1, max = 512))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub rules: Vec<Rule>,

    /// What the upstream receives on an allowed request; rules may override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,

    /// Let CORS preflights through: an `OPTIONS` request with one `Origin` and one
    /// `Access-Control-Request-Method` is allowed without a token when the method it asks about
    /// would reach a rule of this policy. Nothing is forwarded with it (no token, no identity).
    #[serde(default, skip_serializing_if = "is_false")]
    pub cors_preflight: bool,

    /// `Audit`: every decision is computed and counted (metrics, status) but the request is
    /// allowed, with identity headers when the token verified. For rolling out a stricter
    /// policy safely; rules may override it. Default `Enforce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,

    /// Browser sign-in (OpenID Connect, authorization code flow with PKCE): a navigation without
    /// a token or session is sent to the provider, and the session it comes back with is a
    /// caller like a token (docs/sign-in.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_in: Option<SignIn>,
}

/// An OpenID provider and how this policy's hosts sign browsers in with it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignIn {
    /// The provider's issuer; its discovery document is `<issuer>/.well-known/openid-configuration`.
    #[schemars(regex(pattern = r"^https?://[^\s]+$"), length(max = 2048))]
    pub issuer: String,
    /// The client registered at the provider. PKCE is always used; a confidential client also
    /// authenticates with `clientSecretRef` (`client_secret_basic`).
    #[schemars(length(min = 1, max = 256))]
    pub client_id: String,
    /// The client's secret, in a Secret of this namespace labelled `portcullis.dev/client-secret`
    /// (the controller watches only such Secrets). Without it the client is public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<SecretKeyRef>,
    /// Scopes asked for (default `[openid]`; `openid` is always asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = r"^[!#-\[\]-~]+$"), length(min = 1, max = 128)))]
    pub scopes: Vec<String>,
    /// A SigningKey of this namespace whose keys seal the sessions: its rotation keeps sessions
    /// open, a revocation ends them.
    pub session_key_ref: LocalObjectRef,
    /// How long a session lasts at most (default 8h, between 5m and 7d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "duration(self) >= duration('5m') && duration(self) <= duration('168h')", "message": "sessionLifetime must be between 5m and 7d"}
    ]))]
    pub session_lifetime: Option<Duration>,
    /// The path on each host the provider sends browsers back to (default `/.portcullis/callback`);
    /// register `<scheme>://<host><callbackPath>` at the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[A-Za-z0-9._~/-]*$"), length(max = 256))]
    pub callback_path: Option<String>,
    /// The scheme browsers reach the hosts with (default `https`; `http` only for development on
    /// `localhost`, where browsers keep `Secure` cookies too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<SignInScheme>,
    /// The path on each host that signs out (default `/.portcullis/logout`): a `POST` from a
    /// page of the same host (its `Origin`) clears the session and, where the provider has an
    /// `end_session_endpoint`, signs out there too (RP-initiated logout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[A-Za-z0-9._~/-]*$"), length(max = 256))]
    pub logout_path: Option<String>,
    /// Where the browser goes after signing out: a path of the host (default `/`) or an https
    /// URL of an allowed host. Register `<scheme>://<host><path>` at the provider as a post-logout
    /// redirect URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub post_logout_redirect: Option<String>,
    /// Also take the claims of the provider's userinfo endpoint (OpenID Connect Core §5.3) into
    /// the session, at sign-in and at each refresh: for providers that put `email` or `groups`
    /// there only. The ID token's claims win where both have one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub userinfo: bool,
    /// Hosts besides the request's that a sign-in may return to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = HOST_PATTERN), length(max = 253)))]
    pub allowed_redirect_hosts: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignInScheme {
    #[default]
    Https,
    Http,
}

/// A Gateway API object in the policy's namespace (GEP-713 `LocalPolicyTargetReferenceWithSectionName`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// `gateway.networking.k8s.io`.
    #[schemars(regex(pattern = r"^gateway\.networking\.k8s\.io$"))]
    pub group: String,
    pub kind: TargetRefKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// An HTTPRoute or GRPCRoute rule's `name`, or a Gateway listener's `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SECTION_NAME_PATTERN), length(min = 1, max = 253))]
    pub section_name: Option<String>,
}

pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";
/// Gateway API's `SectionName`.
pub const SECTION_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum TargetRefKind {
    Gateway,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
    #[serde(rename = "GRPCRoute")]
    GrpcRoute,
}

impl TargetRefKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "Gateway",
            Self::HttpRoute => "HTTPRoute",
            Self::GrpcRoute => "GRPCRoute",
        }
    }
}

/// Whether decisions are enforced or only recorded.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

/// A trusted token issuer: an external one (`issuer`, `jwks`, `algorithms`), or the cluster's
/// own ServiceAccount token issuer (`kubernetes`), discovered by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.kubernetes) ? !has(self.issuer) && !has(self.jwks) : has(self.issuer) && has(self.jwks) && has(self.algorithms) && size(self.algorithms) > 0",
    "message": "give either kubernetes, or issuer, jwks and algorithms"
}]))]
pub struct IssuerSpec {
    /// Exact value of the `iss` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub issuer: Option<String>,
    /// Accepted `aud` values; a token must carry at least one of them.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 256)))]
    pub audiences: Vec<String>,
    /// Where the issuer's public keys come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksSource>,
    /// Accepted signature algorithms. HMAC and `none` are never accepted. For `kubernetes`,
    /// default RS256 and ES256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub algorithms: Vec<JwtAlgorithm>,
    /// Tolerated clock difference for `exp` and `nbf` (default 60s, at most 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "duration(self) <= duration('5m')", "message": "clockSkew must be at most 5m"}
    ]))]
    pub clock_skew: Option<Duration>,
    /// Trust the cluster's own ServiceAccount tokens (projected, audience-bound, expiring):
    /// the issuer and its keys are the cluster's, discovered by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesIssuer>,
}

/// The cluster's ServiceAccount token issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesIssuer {
    /// The longest lifetime (`exp - iat`) a token may have been issued with (default 1h, at most
    /// 24h). A token outlives the Pod it was bound to; short lifetimes bound that window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "duration(self) >= duration('10m') && duration(self) <= duration('24h')", "message": "maxTokenLifetime must be between 10m and 24h"}
    ]))]
    pub max_token_lifetime: Option<Duration>,
}

/// Exactly one of `uri`, `inline` or `signingKeyRef`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.uri) ? 1 : 0) + (has(self.inline) ? 1 : 0) + (has(self.signingKeyRef) ? 1 : 0) == 1",
    "message": "exactly one of uri, inline or signingKeyRef must be set"
}]))]
pub struct JwksSource {
    /// JWKS URL of the issuer (http or https), fetched and cached by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s]+$"), length(max = 2048))]
    pub uri: Option<String>,
    /// How often the gateway refetches `uri` (default 5m, at least 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "duration(self) >= duration('10s')", "message": "refreshInterval must be at least 10s"}
    ]))]
    pub refresh_interval: Option<Duration>,
    /// A JWKS document given in the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<InlineJwks>,
    /// Public keys of a SigningKey managed by Portcullis (any namespace; only public keys are used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_ref: Option<ObjectRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct InlineJwks {
    #[schemars(length(min = 1, max = 32))]
    pub keys: Vec<JwkObject>,
}

/// One JSON Web Key (RFC 7517), kept as written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(transparent)]
pub struct JwkObject(pub Map<String, Value>);

impl JsonSchema for JwkObject {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "JwkObject".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "A JSON Web Key (RFC 7517).",
            "required": ["kty"],
            "properties": {"kty": {"type": "string", "enum": ["RSA", "EC", "OKP"]}},
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}

/// A reference to an object by name, in the referring object's namespace unless given.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(max = 63))]
    pub namespace: Option<String>,
}

/// A reference to an object in the referring object's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub struct LocalObjectRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key of a Secret in the referring object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in the Secret's data (default `client-secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(max = 253))]
    pub key: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    pub const ALL: [JwtAlgorithm; 9] =
        [Self::RS256, Self::RS384, Self::RS512, Self::PS256, Self::PS384, Self::PS512, Self::ES256, Self::ES384, Self::EdDSA];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

/// Exactly one of `header`, `cookie` or `query`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.header) ? 1 : 0) + (has(self.cookie) ? 1 : 0) + (has(self.query) ? 1 : 0) == 1",
    "message": "exactly one of header, cookie or query must be set"
}]))]
pub struct TokenSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<NamedSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<NamedSource>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub struct HeaderSource {
    #[schemars(regex(pattern = HEADER_NAME_PATTERN), length(max = 128))]
    pub name: String,
    /// Text before the token, compared case-insensitively (e.g. `Bearer `).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub prefix: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub struct NamedSource {
    #[schemars(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"), length(max = 128))]
    pub name: String,
}

/// One route and what a request to it must satisfy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!(has(self.public) && self.public) || ((!has(self.require) || size(self.require) == 0) && (!has(self.anyOf) || size(self.anyOf) == 0) && (!has(self.serviceAccounts) || size(self.serviceAccounts) == 0))",
        "message": "a public rule cannot have require, anyOf or serviceAccounts"
    },
    {
        "rule": "!(has(self.public) && self.public) || !has(self.forward) || !has(self.forward.token) || self.forward.token != 'issue'",
        "message": "a public rule has no caller token to issue an internal token from"
    },
    {
        "rule": "!(has(self.public) && self.public) || !has(self.authentication) || self.authentication != 'Optional'",
        "message": "a public rule takes no token; authentication: Optional is for rules that check one when it is there"
    }
]))]
pub struct Rule {
    /// Unique within the policy; shown in status, logs and metrics.
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(max = 63))]
    pub name: String,
    /// Required unless the policy has `targetRefs`; there it may be omitted (the whole target)
    /// or narrow the target to some of its paths and methods.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub match_: Option<RouteMatch>,
    /// No token needed. Must be said explicitly: nothing is public by omission.
    #[serde(default, skip_serializing_if = "is_false")]
    pub public: bool,
    /// `Optional`: a request without a token is allowed as anonymous (identity headers cleared,
    /// requirements not checked); a token that is present must be valid and satisfy the
    /// requirements. Default `Required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
    /// Requirements that must all hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub require: Vec<Requirement>,
    /// Groups of requirements of which at least one must hold entirely (in addition to `require`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub any_of: Vec<RequirementGroup>,
    /// The caller must be one of these workloads: `namespace/serviceaccount` or `namespace/*`,
    /// with a token of the policy's `kubernetes` issuer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = SERVICE_ACCOUNT_PATTERN), length(max = 317)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub service_accounts: Vec<String>,
    /// Overrides the policy's `forward` for this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,
    /// Overrides the policy's `mode` for this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Authentication {
    #[default]
    Required,
    Optional,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct RequirementGroup {
    #[schemars(length(min = 1, max = 32))]
    pub require: Vec<Requirement>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct RouteMatch {
    #[schemars(length(min = 1, max = 32))]
    pub paths: Vec<PathMatch>,
    /// Methods this route covers; empty means every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub methods: Vec<HttpMethod>,
}

/// Exactly one of `exact`, `prefix` or `template`. Paths are matched after normalisation
/// (docs/architecture.md), so they must themselves be normalised.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.exact) ? 1 : 0) + (has(self.prefix) ? 1 : 0) + (has(self.template) ? 1 : 0) == 1",
    "message": "exactly one of exact, prefix or template must be set"
}]))]
pub struct PathMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^/"), length(max = 1024))]
    pub exact: Option<String>,
    /// Segment-aware: `/orders` matches `/orders` and `/orders/1`, never `/ordersX`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^/"), length(max = 1024))]
    pub prefix: Option<String>,
    /// `/orders/{id}/items`: `{name}` matches one segment, a trailing `{**}` any rest (even none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^/"), length(max = 1024))]
    pub template: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum HttpMethod {
    GET,
    HEAD,
    POST,
    PUT,
    PATCH,
    DELETE,
    OPTIONS,
    CONNECT,
    TRACE,
}

impl HttpMethod {
    pub const ALL: [HttpMethod; 9] =
        [Self::GET, Self::HEAD, Self::POST, Self::PUT, Self::PATCH, Self::DELETE, Self::OPTIONS, Self::CONNECT, Self::TRACE];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::GET => "GET",
            Self::HEAD => "HEAD",
            Self::POST => "POST",
            Self::PUT => "PUT",
            Self::PATCH => "PATCH",
            Self::DELETE => "DELETE",
            Self::OPTIONS => "OPTIONS",
            Self::CONNECT => "CONNECT",
            Self::TRACE => "TRACE",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

/// One condition on a claim. Name the claim with `claim` (dotted path, `realm_access.roles`) or
/// `claimPath` (one entry per level, for names that contain dots such as
/// `https://example.com/roles`), and give exactly one operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.claim) ? 1 : 0) + (has(self.claimPath) ? 1 : 0) == 1",
        "message": "exactly one of claim or claimPath must be set"
    },
    {
        "rule": "(has(self.equals) ? 1 : 0) + (has(self.__in__) ? 1 : 0) + (has(self.notIn) ? 1 : 0) + (has(self.containsAll) ? 1 : 0) + (has(self.containsAny) ? 1 : 0) + (has(self.exists) ? 1 : 0) + (has(self.absent) ? 1 : 0) + (has(self.matches) ? 1 : 0) + (has(self.equalsHeader) ? 1 : 0) + (has(self.equalsPathParam) ? 1 : 0) == 1",
        "message": "exactly one operator (equals, in, notIn, containsAll, containsAny, exists, absent, matches, equalsHeader, equalsPathParam) must be set"
    },
    {"rule": "!has(self.exists) || self.exists", "message": "exists can only be true; use absent: true"},
    {"rule": "!has(self.absent) || self.absent", "message": "absent can only be true; use exists: true"}
]))]
pub struct Requirement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = CLAIM_PATTERN), length(max = 256))]
    pub claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8), inner(length(min = 1, max = 256)))]
    pub claim_path: Option<Vec<String>>,

    /// The claim is this string, or a number or boolean that prints as it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub equals: Option<String>,
    /// The claim is one of these.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(max = 1024)))]
    pub in_: Option<Vec<String>>,
    /// The claim is present and none of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(max = 1024)))]
    pub not_in: Option<Vec<String>>,
    /// The claim (an array, or a space-separated string such as `scope`) holds all of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(max = 1024)))]
    pub contains_all: Option<Vec<String>>,
    /// The claim (an array, or a space-separated string) holds at least one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(max = 1024)))]
    pub contains_any: Option<Vec<String>>,
    /// The claim is present and not null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    /// The claim is not present (or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absent: Option<bool>,
    /// The whole claim string (or any element of an array claim) matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub matches: Option<String>,
    /// The claim equals the value of this request header (e.g. a tenant id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HEADER_NAME_PATTERN), length(max = 128))]
    pub equals_header: Option<String>,
    /// The claim equals this parameter of the matched path template (`tenant` for
    /// `/tenants/{tenant}/orders/{**}`), percent-decoded. Every path of the rule must be a
    /// template with that parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"), length(max = 64))]
    pub equals_path_param: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TokenForwarding {
    /// Pass the caller's token on unchanged.
    #[default]
    Original,
    /// Remove the caller's token.
    None,
    /// Replace it with an internal token signed by a SigningKey (see `issue`).
    Issue,
}

/// What the upstream receives with an allowed request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.token) || self.token != 'issue' || has(self.issue)",
    "message": "token: issue needs issue.signingKeyRef"
}]))]
pub struct Forward {
    /// Request headers set from claims: header name → the claim, named as in `require`: a dotted
    /// name (`realm_access.roles`), `{claim: realm_access.roles}`, or
    /// `{claimPath: ["https://example.com/roles"]}` for names with dots. Whatever a client sent
    /// in these headers is replaced (or removed when the claim is absent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub claims_to_headers: BTreeMap<String, HeaderClaim>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenForwarding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue: Option<IssueSpec>,
}

/// The claim a header is set from: a dotted name, or `{claim}` / `{claimPath}` as in `require`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderClaim {
    Dotted(String),
    Path(Vec<String>),
}

impl Serialize for HeaderClaim {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Dotted(d) => s.serialize_str(d),
            Self::Path(p) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("claimPath", p)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for HeaderClaim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        const EXPECTED: &str = "expected a dotted claim name, {claim: NAME} or {claimPath: [LEVEL, ...]}";
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Self::Dotted(s)),
            Value::Object(m) if m.len() == 1 => match m.into_iter().next().expect("one entry") {
                (k, Value::String(s)) if k == "claim" => Ok(Self::Dotted(s)),
                (k, Value::Array(items)) if k == "claimPath" => items
                    .into_iter()
                    .map(|i| match i {
                        Value::String(s) => Ok(s),
                        other => Err(D::Error::custom(format!("claimPath: expected a list of strings, got {other}"))),
                    })
                    .collect::<Result<_, _>>()
                    .map(Self::Path),
                (k, v) => Err(D::Error::custom(format!("{EXPECTED}, got {k}: {v}"))),
            },
            other => Err(D::Error::custom(format!("{EXPECTED}, got {other}"))),
        }
    }
}

impl JsonSchema for HeaderClaim {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HeaderClaim".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // A string or an object: not expressible as one structural type, so the API server keeps
        // it as written and the controller validates it (Accepted=False with the field path).
        schemars::json_schema!({
            "description": "A dotted claim name, {claim: NAME} or {claimPath: [LEVEL, ...]}.",
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}

/// The internal token minted for `token: issue`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssueSpec {
    /// A SigningKey in the policy's namespace.
    pub signing_key_ref: LocalObjectRef,
    /// The `aud` of the internal token.
    #[schemars(length(min = 1, max = 256))]
    pub audience: String,
    /// Lifetime of the internal token (default 5m, at most 1h); never beyond the caller's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "duration(self) >= duration('1s') && duration(self) <= duration('1h')", "message": "ttl must be between 1s and 1h"}
    ]))]
    pub ttl: Option<Duration>,
    /// Claims copied from the caller's token (top-level names; `sub` is always copied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub claims: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The data plane as the gateway replicas report it (their heartbeats).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<GatewayServing>,
    /// Remote key sets of the policy's issuers, as the gateway replicas see them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<IssuerHealth>,
    /// Rules in Audit mode: what enforcing them would have decided recently, all replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<RuleAudit>,
    /// One line for `kubectl get`: e.g. `would deny 0.3% (wrong_audience)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_summary: Option<String>,
    /// Per Gateway the policy applies through (GEP-713): whether it is accepted there and
    /// enforced by both the gateway's wiring and the Portcullis replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ancestors: Vec<PolicyAncestorStatus>,
}

/// The status of a policy at one ancestor (a Gateway), in Gateway API's shape.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorStatus {
    pub ancestor_ref: AncestorRef,
    /// `portcullis.dev/controller`.
    pub controller_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Gateway API `ParentReference`, as far as an ancestor needs it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AncestorRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayServing {
    pub name: String,
    /// Live replicas (heartbeat renewed in time).
    pub replicas: u32,
    /// Live replicas whose config contains this generation of the policy.
    pub serving: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerHealth {
    pub issuer: String,
    pub uri: String,
    /// `Ready` on every replica that reported it, `Failing` on at least one, `Unknown` before
    /// any replica fetched it.
    pub jwks: String,
    /// Keys held (the fewest across replicas).
    pub keys: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Since when the worst replica's state holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleAudit {
    pub rule: String,
    pub would_allow: u64,
    pub would_deny: u64,
    /// Most frequent deny reasons, most frequent first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_reasons: Vec<ReasonCount>,
    /// Length of the window the counts cover, in seconds.
    pub window_seconds: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReasonCount {
    pub reason: String,
    pub count: u64,
}
