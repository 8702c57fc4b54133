//! Time-based rules about nodes, tokens and certificates. `now` is always an argument.

use std::time::Duration;

use edgefleet_wire::Timestamp;
use edgefleet_wire::api::NodeStatus;

/// The liveness of a node from when it was last heard from.
pub fn node_status(
    now: Timestamp,
    last_seen: Option<Timestamp>,
    revoked: bool,
    not_ready_after: Duration,
) -> NodeStatus {
    if revoked {
        return NodeStatus::Revoked;
    }
    match last_seen {
        None => NodeStatus::Unknown,
        Some(seen) if now - seen <= not_ready_after => NodeStatus::Ready,
        Some(_) => NodeStatus::NotReady,
    }
}

/// Why a join token can or cannot enroll a node now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Active,
    Expired,
    UsedUp,
    Revoked,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::UsedUp => "used-up",
            Self::Revoked => "revoked",
        }
    }

    /// The message an agent gets when it presents a token in this state.
    pub fn refusal(self) -> Option<&'static str> {
        match self {
            Self::Active => None,
            Self::Expired => {
                Some("join token has expired; create a new one with `edgefleet token create`")
            }
            Self::UsedUp => Some(
                "join token has been used as many times as it allows; create a new one with `edgefleet token create`",
            ),
            Self::Revoked => Some("join token has been revoked"),
        }
    }
}

pub fn token_state(
    now: Timestamp,
    expires_at: Timestamp,
    uses: u32,
    uses_allowed: Option<u32>,
    revoked: bool,
) -> TokenState {
    if revoked {
        TokenState::Revoked
    } else if now >= expires_at {
        TokenState::Expired
    } else if uses_allowed.is_some_and(|allowed| uses >= allowed) {
        TokenState::UsedUp
    } else {
        TokenState::Active
    }
}

/// When a certificate valid from `not_before` to `not_after` should be renewed: at two
/// thirds of its life.
pub fn renewal_time(not_before: Timestamp, not_after: Timestamp) -> Timestamp {
    let life = not_after - not_before;
    not_before + life * 2 / 3
}

/// What the agent should do about its certificate at wall-clock time `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalDecision {
    /// Renew now.
    Renew,
    /// Check again after this long. Waits are capped, so a clock that jumps is noticed
    /// within the cap rather than after a long sleep computed from a wrong clock.
    Wait(Duration),
}

/// The longest the agent sleeps between certificate checks.
pub const RENEWAL_CHECK_CAP: Duration = Duration::from_secs(15 * 60);

pub fn renewal_decision(
    now: Timestamp,
    not_before: Timestamp,
    not_after: Timestamp,
) -> RenewalDecision {
    // A clock that jumped back before the certificate's start: the certificate looks not yet
    // valid to us, but the server's clock decides. Renewing gets a fresh certificate whose
    // validity the server computed, which is the safest thing to do in either direction.
    if now < not_before || now >= renewal_time(not_before, not_after) {
        return RenewalDecision::Renew;
    }
    let until = renewal_time(not_before, not_after) - now;
    let until = Duration::try_from(until).unwrap_or(Duration::ZERO);
    RenewalDecision::Wait(until.min(RENEWAL_CHECK_CAP))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn status() {
        let now = datetime!(2026-01-01 12:00 UTC);
        let window = Duration::from_secs(45);
        assert_eq!(node_status(now, None, false, window), NodeStatus::Unknown);
        assert_eq!(
            node_status(now, Some(now - time::Duration::seconds(10)), false, window),
            NodeStatus::Ready
        );
        assert_eq!(
            node_status(now, Some(now - time::Duration::seconds(46)), false, window),
            NodeStatus::NotReady
        );
        assert_eq!(
            node_status(now, Some(now), true, window),
            NodeStatus::Revoked
        );
        // A node whose clock runs ahead of ours is still Ready.
        assert_eq!(
            node_status(now, Some(now + time::Duration::seconds(30)), false, window),
            NodeStatus::Ready
        );
    }

    #[test]
    fn tokens() {
        let now = datetime!(2026-01-01 12:00 UTC);
        let later = now + time::Duration::hours(1);
        assert_eq!(token_state(now, later, 0, None, false), TokenState::Active);
        assert_eq!(
            token_state(later, later, 0, None, false),
            TokenState::Expired
        );
        assert_eq!(
            token_state(now, later, 2, Some(2), false),
            TokenState::UsedUp
        );
        assert_eq!(
            token_state(now, later, 1, Some(2), false),
            TokenState::Active
        );
        assert_eq!(token_state(now, later, 0, None, true), TokenState::Revoked);
    }

    #[test]
    fn renewal() {
        let start = datetime!(2026-01-01 0:00 UTC);
        let end = start + time::Duration::days(3);
        assert_eq!(renewal_time(start, end), start + time::Duration::days(2));
        assert_eq!(
            renewal_decision(start + time::Duration::days(2), start, end),
            RenewalDecision::Renew
        );
        assert_eq!(
            renewal_decision(start + time::Duration::days(4), start, end),
            RenewalDecision::Renew
        );
        // Clock jumped back to before the certificate was issued.
        assert_eq!(
            renewal_decision(start - time::Duration::days(400), start, end),
            RenewalDecision::Renew
        );
        assert_eq!(
            renewal_decision(start, start, end),
            RenewalDecision::Wait(RENEWAL_CHECK_CAP)
        );
        assert_eq!(
            renewal_decision(
                start + time::Duration::days(2) - time::Duration::seconds(5),
                start,
                end
            ),
            RenewalDecision::Wait(Duration::from_secs(5))
        );
    }
}
