//! Who may do what: the roles an API token carries.

/// What a token allows. `Read` < `Write` < `Admin`; `Replicate` is for followers (the
/// replication session and snapshots); an admin may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum AccessRole {
    Read,
    Write,
    Admin,
    Replicate,
    /// A device's token (`flotilla device add`): syncs its device's shape, nothing else.
    Device,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected read, write, admin, replicate or device")]
pub struct AccessRoleParseError(pub String);

impl AccessRole {
    pub const ALL: [AccessRole; 5] = [
        AccessRole::Read,
        AccessRole::Write,
        AccessRole::Admin,
        AccessRole::Replicate,
        AccessRole::Device,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccessRole::Read => "read",
            AccessRole::Write => "write",
            AccessRole::Admin => "admin",
            AccessRole::Replicate => "replicate",
            AccessRole::Device => "device",
        }
    }

    /// Whether a token of this role may do what `needed` allows.
    pub fn allows(self, needed: AccessRole) -> bool {
        use AccessRole::*;
        matches!(
            (self, needed),
            (Admin, _)
                | (Write, Read | Write)
                | (Read, Read)
                | (Replicate, Replicate)
                | (Device, Device)
        )
    }
}

impl std::str::FromStr for AccessRole {
    type Err = AccessRoleParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AccessRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| AccessRoleParseError(s.to_string()))
    }
}

impl std::fmt::Display for AccessRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_what_they_include() {
        use AccessRole::*;
        let allowed: Vec<(AccessRole, AccessRole)> = AccessRole::ALL
            .into_iter()
            .flat_map(|a| AccessRole::ALL.into_iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.allows(*b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Read, Read),
                (Write, Read),
                (Write, Write),
                (Admin, Read),
                (Admin, Write),
                (Admin, Admin),
                (Admin, Replicate),
                (Admin, Device),
                (Replicate, Replicate),
                (Device, Device),
            ]
        );
        for r in AccessRole::ALL {
            assert_eq!(r.as_str().parse::<AccessRole>().unwrap(), r);
        }
        assert!("root".parse::<AccessRole>().is_err());
    }
}
