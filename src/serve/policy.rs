//! The one policy point of the profile API: what each role may do and which fields it may
//! read or reveal. Permissions name field classes (`public`, `sensitive`, `pii`, `derived`)
//! or single fields, so a field the schema classifies `pii` tomorrow is masked everywhere
//! without a code change. Everything not granted is denied.

use crate::config::RoleConfig;
use crate::schema::Classification;
use std::collections::BTreeMap;

/// What a caller asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// A profile, masked to what the role may read; the segments read.
    Read,
    /// Decrypt chosen fields, with a reason (audited).
    Reveal,
    /// Query the index (no PII in it).
    Search,
    /// Find a user by email (audited: it tells whether a person is a user).
    Lookup,
    /// A user's audit trail.
    Audit,
    /// Everything held about a user, PII decrypted (audited first).
    Export,
    /// Crypto-shred a user (audited).
    Erase,
}

impl Action {
    const ALL: [Action; 7] = [
        Action::Read,
        Action::Reveal,
        Action::Search,
        Action::Lookup,
        Action::Audit,
        Action::Export,
        Action::Erase,
    ];

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Reveal => "reveal",
            Action::Search => "search",
            Action::Lookup => "lookup",
            Action::Audit => "audit",
            Action::Export => "export",
            Action::Erase => "erase",
        }
    }
}

/// A role: the actions it may take, the field classes or fields it reads as stored (`pii`
/// cannot be read, only revealed: it is stored encrypted), and those it may reveal.
#[derive(Debug, Clone, Default)]
struct Role {
    actions: Vec<Action>,
    read: Vec<String>,
    reveal: Vec<String>,
}

/// The roles profile-sync ships; a pipeline file's `serve.roles` replaces them.
pub fn shipped_roles() -> BTreeMap<String, RoleConfig> {
    let role = |actions: &[Action], read: &[&str], reveal: &[&str]| RoleConfig {
        actions: actions.iter().map(|a| a.as_str().to_string()).collect(),
        read: read.iter().map(|s| s.to_string()).collect(),
        reveal: reveal.iter().map(|s| s.to_string()).collect(),
    };
    use Action::*;
    BTreeMap::from([
        (
            "personalization".into(),
            role(&[Read], &["public", "derived"], &[]),
        ),
        ("analyst".into(), role(&[Search], &[], &[])),
        (
            "support".into(),
            role(
                &[Read, Reveal, Lookup],
                &["public", "derived"],
                &["email", "phone", "display_name"],
            ),
        ),
        (
            "privacy_officer".into(),
            role(
                &[Read, Reveal, Lookup, Audit, Export, Erase],
                &["public", "derived", "sensitive"],
                &["pii", "sensitive"],
            ),
        ),
        (
            "admin".into(),
            role(
                &[Read, Reveal, Search, Lookup, Audit, Export, Erase],
                &["public", "derived", "sensitive"],
                &["pii", "sensitive"],
            ),
        ),
    ])
}

fn class_name(class: Classification) -> &'static str {
    match class {
        Classification::Pii => "pii",
        Classification::Sensitive => "sensitive",
        Classification::Public => "public",
        Classification::Derived => "derived",
    }
}

/// The roles in force and the decisions made from them.
#[derive(Debug, Clone)]
pub struct Policy {
    roles: BTreeMap<String, Role>,
}

impl Policy {
    /// Refuses a role that grants something that does not exist (a typo would otherwise deny
    /// silently, or worse, look granted): `fields` are the schema's top-level fields.
    pub fn new(
        declared: &BTreeMap<String, RoleConfig>,
        fields: &[(String, Classification)],
    ) -> Result<Self, String> {
        let mut roles = BTreeMap::new();
        for (name, role) in declared {
            let actions = role
                .actions
                .iter()
                .map(|a| {
                    Action::parse(a).ok_or_else(|| {
                        let names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
                        format!(
                            "serve.roles.{name}: unknown action `{a}` (actions: {})",
                            names.join(", ")
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            for granted in role.read.iter().chain(&role.reveal) {
                let known = ["pii", "sensitive", "public", "derived"].contains(&granted.as_str())
                    || fields.iter().any(|(f, _)| f == granted)
                    || crate::schema::DERIVED_FIELDS
                        .iter()
                        .any(|(f, _)| f == granted);
                if !known {
                    return Err(format!(
                        "serve.roles.{name}: `{granted}` is neither a field class (public, sensitive, pii, derived) nor a field of the schema"
                    ));
                }
            }
            if role.read.iter().any(|g| g == "pii") {
                return Err(format!(
                    "serve.roles.{name}: `pii` cannot be read, only revealed (it is stored encrypted): move it to `reveal`"
                ));
            }
            roles.insert(
                name.clone(),
                Role {
                    actions,
                    read: role.read.clone(),
                    reveal: role.reveal.clone(),
                },
            );
        }
        Ok(Self { roles })
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    pub fn role_names(&self) -> Vec<&str> {
        self.roles.keys().map(String::as_str).collect()
    }

    /// The actions `role` may take.
    pub fn actions(&self, role: &str) -> Vec<Action> {
        self.roles
            .get(role)
            .map(|r| r.actions.clone())
            .unwrap_or_default()
    }

    pub fn allows(&self, role: &str, action: Action) -> bool {
        self.roles
            .get(role)
            .is_some_and(|r| r.actions.contains(&action))
    }

    fn grants(list: &[String], field: &str, class: Classification) -> bool {
        list.iter().any(|g| g == field || g == class_name(class))
    }

    /// Whether `role` sees `field` as stored (pii never: it is only ever revealed).
    pub fn reads(&self, role: &str, field: &str, class: Classification) -> bool {
        class != Classification::Pii
            && self
                .roles
                .get(role)
                .is_some_and(|r| Self::grants(&r.read, field, class))
    }

    /// Whether `role` may reveal `field` (pii or sensitive) with a reason.
    pub fn reveals(&self, role: &str, field: &str, class: Classification) -> bool {
        self.allows(role, Action::Reveal)
            && matches!(class, Classification::Pii | Classification::Sensitive)
            && self
                .roles
                .get(role)
                .is_some_and(|r| Self::grants(&r.reveal, field, class))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<(String, Classification)> {
        vec![
            ("email".into(), Classification::Pii),
            ("phone".into(), Classification::Pii),
            ("display_name".into(), Classification::Pii),
            ("birth_date".into(), Classification::Pii),
            ("locale".into(), Classification::Public),
            ("preferences".into(), Classification::Sensitive),
        ]
    }

    #[test]
    fn everything_not_granted_is_denied() {
        let policy = Policy::new(&shipped_roles(), &fields()).unwrap();
        assert!(!policy.allows("analyst", Action::Read));
        assert!(!policy.allows("nobody", Action::Search));
        assert!(!policy.reads("personalization", "preferences", Classification::Sensitive));
        assert!(!policy.reads("admin", "email", Classification::Pii));
        assert!(policy.reveals("support", "email", Classification::Pii));
        assert!(!policy.reveals("support", "birth_date", Classification::Pii));
        assert!(!policy.reveals("personalization", "email", Classification::Pii));
        assert!(policy.reveals("privacy_officer", "birth_date", Classification::Pii));
        // A field classified pii later is covered by the class, with no change here.
        assert!(policy.reveals("privacy_officer", "new_pii_field", Classification::Pii));
        assert!(!policy.reads("support", "new_pii_field", Classification::Pii));
    }

    #[test]
    fn a_role_naming_an_unknown_field_or_reading_pii_is_refused() {
        let mut roles = shipped_roles();
        roles
            .get_mut("support")
            .unwrap()
            .reveal
            .push("emial".into());
        assert!(Policy::new(&roles, &fields())
            .unwrap_err()
            .contains("emial"));
        let mut roles = shipped_roles();
        roles.get_mut("support").unwrap().read.push("pii".into());
        assert!(Policy::new(&roles, &fields())
            .unwrap_err()
            .contains("only revealed"));
        let mut roles = shipped_roles();
        roles
            .get_mut("analyst")
            .unwrap()
            .actions
            .push("delete_everything".into());
        assert!(Policy::new(&roles, &fields())
            .unwrap_err()
            .contains("delete_everything"));
    }
}
