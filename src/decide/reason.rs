//! Why a request was denied: the reasons that label metrics and logs, their HTTP status and
//! the RFC 6750 error a client gets.

use crate::policy::path::PathError;

/// Why a request was denied. The string forms are stable: they label metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    NoRoute,
    UnsafePath(PathError),
    BadHost,
    BadMethod,
    /// The authorization request itself is unusable (a forwarded header missing or repeated).
    BadRequest,
    MissingToken,
    AmbiguousToken,
    MalformedToken,
    UnsupportedAlgorithm,
    ForbiddenHeader,
    UntrustedIssuer,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongAudience,
    KeysUnavailable,
    ClaimsNotSatisfied,
    MintUnavailable,
    /// The proxy routed the request to another policy than the one Portcullis matches it to.
    RouteMismatch,
    /// Which route applies depends on a repeated or percent-encoded header or query parameter
    /// that a route's condition names: the gateway's reading of it cannot be known.
    AmbiguousRoute,
    /// A ServiceAccount token issued for longer than its issuer accepts, or without `iat`.
    LifetimeTooLong,
    /// A browser navigation without a token or session, to a policy with sign-in: redirected
    /// to the provider.
    SignInRequired,
    /// Sign-in cannot start: the provider's discovery or the session key is not there (yet).
    SignInUnavailable,
    /// A page load whose session was just refreshed: sent to itself again with the new session
    /// cookies (what every proxy passes on).
    SessionRefreshed,
}

impl DenyReason {
    pub const ALL: [DenyReason; 25] = [
        Self::NoRoute,
        Self::UnsafePath(PathError::Empty),
        Self::BadHost,
        Self::BadMethod,
        Self::BadRequest,
        Self::MissingToken,
        Self::AmbiguousToken,
        Self::MalformedToken,
        Self::UnsupportedAlgorithm,
        Self::ForbiddenHeader,
        Self::UntrustedIssuer,
        Self::UnknownKey,
        Self::BadSignature,
        Self::Expired,
        Self::NotYetValid,
        Self::WrongAudience,
        Self::KeysUnavailable,
        Self::ClaimsNotSatisfied,
        Self::MintUnavailable,
        Self::RouteMismatch,
        Self::AmbiguousRoute,
        Self::LifetimeTooLong,
        Self::SignInRequired,
        Self::SignInUnavailable,
        Self::SessionRefreshed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::UnsafePath(_) => "unsafe_path",
            Self::BadHost => "bad_host",
            Self::BadMethod => "bad_method",
            Self::BadRequest => "bad_request",
            Self::MissingToken => "missing_token",
            Self::AmbiguousToken => "ambiguous_token",
            Self::MalformedToken => "malformed_token",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::ForbiddenHeader => "forbidden_header",
            Self::UntrustedIssuer => "untrusted_issuer",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongAudience => "wrong_audience",
            Self::KeysUnavailable => "keys_unavailable",
            Self::ClaimsNotSatisfied => "claims_not_satisfied",
            Self::MintUnavailable => "mint_unavailable",
            Self::RouteMismatch => "route_mismatch",
            Self::AmbiguousRoute => "ambiguous_route",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::SignInRequired => "sign_in_required",
            Self::SignInUnavailable => "sign_in_unavailable",
            Self::SessionRefreshed => "session_refreshed",
        }
    }

    /// HTTP status: 400 for requests that are ambiguous or malformed (never guessed at), 401 for
    /// credentials, 403 for permissions and unroutable paths, 503 when Portcullis itself cannot
    /// decide (fail closed, and visibly so).
    pub fn status(self) -> u16 {
        match self {
            Self::BadHost | Self::BadMethod | Self::BadRequest | Self::AmbiguousToken | Self::AmbiguousRoute => 400,
            Self::NoRoute | Self::UnsafePath(_) | Self::ClaimsNotSatisfied | Self::RouteMismatch => 403,
            Self::KeysUnavailable | Self::MintUnavailable | Self::SignInUnavailable => 503,
            Self::SignInRequired | Self::SessionRefreshed => 302,
            _ => 401,
        }
    }

    /// The RFC 6750 error code, if any.
    pub fn bearer_error(self) -> Option<&'static str> {
        match self {
            Self::MissingToken | Self::SignInRequired | Self::SessionRefreshed => None,
            Self::AmbiguousToken | Self::AmbiguousRoute => Some("invalid_request"),
            Self::ClaimsNotSatisfied => Some("insufficient_scope"),
            s if s.status() == 401 => Some("invalid_token"),
            _ => None,
        }
    }

    /// A short, client-safe description.
    pub fn description(self) -> &'static str {
        match self {
            Self::NoRoute => "no route",
            Self::UnsafePath(e) => e.as_str(),
            Self::BadHost => "invalid host",
            Self::BadMethod => "invalid method",
            Self::BadRequest => "invalid authorization request",
            Self::MissingToken => "token required",
            Self::AmbiguousToken => "more than one token",
            Self::MalformedToken => "malformed token",
            Self::UnsupportedAlgorithm => "algorithm not accepted",
            Self::ForbiddenHeader => "token header not accepted",
            Self::UntrustedIssuer => "untrusted issuer",
            Self::UnknownKey => "unknown signing key",
            Self::BadSignature => "invalid signature",
            Self::Expired => "token expired",
            Self::NotYetValid => "token not yet valid",
            Self::WrongAudience => "wrong audience",
            Self::KeysUnavailable => "issuer keys unavailable",
            Self::ClaimsNotSatisfied => "insufficient claims",
            Self::MintUnavailable => "internal token unavailable",
            Self::RouteMismatch => "routed to another policy",
            Self::AmbiguousRoute => "repeated or encoded header or query parameter a route matches on",
            Self::LifetimeTooLong => "token issued for too long",
            Self::SignInRequired => "sign in",
            Self::SignInUnavailable => "sign-in is unavailable: the identity provider cannot be reached",
            Self::SessionRefreshed => "session refreshed",
        }
    }
}
