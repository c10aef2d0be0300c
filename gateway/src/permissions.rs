//! Who may subscribe and publish where: the namespace rules and the connection's token, in one
//! place.
//!
//! Subscribe, in this order:
//! 1. the channel's namespace must exist (with a namespaces file, only the ones it names): else
//!    error 102;
//! 2. a user-limited channel (`…#alice,bob`) is readable only by the users it names, whatever
//!    else the token grants: others get 103; the named users are let in;
//! 3. a channel the token's `channels` claim grants is allowed;
//! 4. a namespace with `require_grant` refuses everything else (103);
//! 5. an anonymous connection needs `anonymous_subscribe` (103 otherwise);
//! 6. allowed.
//!
//! Publish, in this order:
//! 1. a user-limited channel takes publications only from the users it names, whatever the
//!    token's `publish` claim grants (a `publish: ["chat:*"]` grant does not reach into
//!    `chat:dm#alice,bob`): others get 103;
//! 2. a channel the token's `publish` claim grants is allowed;
//! 3. otherwise only in a namespace with `client_publish`, and only to a channel the
//!    connection may subscribe to.

use chorus_bus::namespaces::Namespaces;
use chorus_protocol::channel;
use chorus_protocol::client;
use chorus_protocol::codes::ErrorCode;

use crate::auth::Identity;

/// Whether `id` may subscribe to the (valid) channel `ch`.
pub(crate) fn may_subscribe(ns: &Namespaces, id: &Identity, ch: &str) -> Result<(), client::Error> {
    let rules = ns
        .lookup(ch)
        .map_err(|e| ErrorCode::BadChannel.with(e.to_string()))?;
    if let Some(users) = limited_to(ch) {
        return if !id.is_anonymous() && users.clone().any(|u| u == id.user) {
            Ok(())
        } else {
            Err(ErrorCode::PermissionDenied.with(format!("{ch} is readable only by its users")))
        };
    }
    if id.grants_subscribe(ch) {
        return Ok(());
    }
    if rules.require_grant {
        return Err(ErrorCode::PermissionDenied.with(format!("the token does not grant {ch}")));
    }
    if id.is_anonymous() && !rules.anonymous_subscribe {
        return Err(ErrorCode::PermissionDenied.with(format!(
            "anonymous connections may not subscribe to {}",
            namespace_name(ch)
        )));
    }
    Ok(())
}

/// Whether `id` may publish to the (valid) channel `ch` from its WebSocket.
pub(crate) fn may_publish(ns: &Namespaces, id: &Identity, ch: &str) -> Result<(), client::Error> {
    let rules = ns
        .lookup(ch)
        .map_err(|e| ErrorCode::BadChannel.with(e.to_string()))?;
    if limited_to(ch).is_some() {
        // The users' own channel: their grants may open it to them, nobody else's can.
        may_subscribe(ns, id, ch)?;
    }
    if id.grants_publish(ch) {
        return Ok(());
    }
    if !rules.client_publish {
        return Err(ErrorCode::PermissionDenied
            .with(format!("clients may not publish to {}", namespace_name(ch))));
    }
    may_subscribe(ns, id, ch)
}

/// The users a user-limited channel (`name#alice,bob`) is readable by, if it is one.
pub(crate) fn limited_to(ch: &str) -> Option<impl Iterator<Item = &str> + Clone> {
    let (_, users) = ch.rsplit_once('#')?;
    Some(users.split(',').filter(|u| !u.is_empty()))
}

fn namespace_name(ch: &str) -> String {
    match channel::namespace(ch) {
        "" => "channels without a namespace".to_owned(),
        ns => format!("namespace {ns}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Identity {
        Identity {
            user: name.into(),
            ..Identity::default()
        }
    }

    fn file() -> Namespaces {
        Namespaces::parse(
            r#"
            [default]
            anonymous_subscribe = true
            [namespace.chat]
            client_publish = true
            [namespace.private]
            require_grant = true
            client_publish = true
            "#,
        )
        .unwrap()
    }

    fn code(r: Result<(), client::Error>) -> u32 {
        r.err().map_or(0, |e| e.code)
    }

    #[test]
    fn a_publish_grant_does_not_reach_into_another_users_channel() {
        let ns = file();
        let granted = |name: &str| Identity {
            publish: vec!["chat:*".into()],
            ..user(name)
        };
        assert_eq!(
            code(may_publish(&ns, &granted("mallory"), "chat:dm#alice,bob")),
            ErrorCode::PermissionDenied.code()
        );
        assert_eq!(
            code(may_publish(&ns, &granted("alice"), "chat:dm#alice,bob")),
            0
        );
        assert_eq!(code(may_publish(&ns, &granted("mallory"), "chat:room")), 0);
        let anonymous = Identity {
            publish: vec!["*".into()],
            ..Identity::default()
        };
        assert_eq!(
            code(may_publish(&ns, &anonymous, "chat:dm#alice,bob")),
            ErrorCode::PermissionDenied.code()
        );
    }

    #[test]
    fn unknown_namespaces_are_bad_channels_once_a_file_is_given() {
        let ns = file();
        let e = may_subscribe(&ns, &user("u"), "other:x").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadChannel.code());
        assert_eq!(e.message, "unknown namespace \"other\"");
        assert_eq!(
            code(may_publish(&ns, &user("u"), "other:x")),
            ErrorCode::BadChannel.code()
        );
    }

    #[test]
    fn anonymous_subscribe_follows_the_namespace() {
        let ns = file();
        let anon = Identity::anonymous();
        assert_eq!(code(may_subscribe(&ns, &anon, "news")), 0);
        let e = may_subscribe(&ns, &anon, "chat:x").unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied.code());
        assert_eq!(
            e.message,
            "anonymous connections may not subscribe to namespace chat"
        );
        assert_eq!(code(may_subscribe(&ns, &user("u"), "chat:x")), 0);
    }

    #[test]
    fn require_grant_needs_a_matching_channels_claim() {
        let ns = file();
        assert_eq!(
            code(may_subscribe(&ns, &user("u"), "private:a")),
            ErrorCode::PermissionDenied.code()
        );
        let granted = Identity {
            user: "u".into(),
            subscribe: vec!["private:a*".into()],
            ..Identity::default()
        };
        assert_eq!(code(may_subscribe(&ns, &granted, "private:abc")), 0);
        assert_eq!(
            code(may_subscribe(&ns, &granted, "private:b")),
            ErrorCode::PermissionDenied.code()
        );
    }

    #[test]
    fn user_limited_channels_admit_only_their_users_whatever_the_grants() {
        let ns = file();
        assert_eq!(
            code(may_subscribe(&ns, &user("alice"), "news#alice,bob")),
            0
        );
        assert_eq!(code(may_subscribe(&ns, &user("bob"), "news#alice,bob")), 0);
        // Even in a require_grant namespace, the named users need no grant.
        assert_eq!(
            code(may_subscribe(&ns, &user("bob"), "private:dm#alice,bob")),
            0
        );
        let everything = Identity {
            user: "carol".into(),
            subscribe: vec!["*".into()],
            ..Identity::default()
        };
        let e = may_subscribe(&ns, &everything, "news#alice,bob").unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied.code());
        assert_eq!(e.message, "news#alice,bob is readable only by its users");
        assert_eq!(
            code(may_subscribe(&ns, &Identity::anonymous(), "news#,")),
            ErrorCode::PermissionDenied.code()
        );
    }

    #[test]
    fn publish_needs_client_publish_and_subscribe_rights_or_a_publish_grant() {
        let ns = file();
        let e = may_publish(&ns, &user("u"), "news").unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied.code());
        assert_eq!(
            e.message,
            "clients may not publish to channels without a namespace"
        );
        assert_eq!(code(may_publish(&ns, &user("u"), "chat:x")), 0);
        // client_publish, but anonymous may not subscribe to chat: so it may not publish.
        assert_eq!(
            code(may_publish(&ns, &Identity::anonymous(), "chat:x")),
            ErrorCode::PermissionDenied.code()
        );
        // client_publish, but the channel needs a grant to read.
        assert_eq!(
            code(may_publish(&ns, &user("u"), "private:x")),
            ErrorCode::PermissionDenied.code()
        );
        let publisher = Identity {
            user: "svc".into(),
            publish: vec!["news".into()],
            ..Identity::default()
        };
        assert_eq!(code(may_publish(&ns, &publisher, "news")), 0);
    }

    #[test]
    fn builtin_rules_keep_the_development_behaviour() {
        let ns = Namespaces::builtin();
        let anon = Identity::anonymous();
        for ch in ["news", "chat:room", "sports:x"] {
            assert_eq!(code(may_subscribe(&ns, &anon, ch)), 0, "{ch}");
        }
        assert_eq!(code(may_publish(&ns, &anon, "chat:room")), 0);
        let e = may_publish(&ns, &anon, "sports:x").unwrap_err();
        assert_eq!(e.message, "clients may not publish to namespace sports");
    }
}
