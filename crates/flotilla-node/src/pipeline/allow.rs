//! Where pipelines may deliver: an allow-list in the node's config (`[pipeline-targets]
//! allow = [...]`), checked when a pipeline is added and whenever its target is opened. Without
//! one, a node delivers only to hosts on its own machine (loopback) and into
//! `<data>/exports/`: a pipeline must not make a node a tool to reach, or write to, whatever an
//! API caller names.

use flotilla_types::{InvalidPipeline, PipelineTarget};
use std::path::{Component, Path, PathBuf};

/// An allow-list entry that cannot be read, or a target the list does not allow: why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotAllowed(pub String);

impl From<InvalidPipeline> for NotAllowed {
    fn from(e: InvalidPipeline) -> NotAllowed {
        NotAllowed(e.0)
    }
}

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// A network endpoint: scheme (`postgres`, `http`, `https`), host, port, and a path prefix
    /// (a PostgreSQL database, an URL path) when given.
    Endpoint {
        scheme: String,
        host: String,
        port: u16,
        path: String,
    },
    /// Any host of this machine, any port (the default).
    Loopback,
    /// Files in this directory (or below it).
    Directory(PathBuf),
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "postgres" => Some(5432),
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

fn normal_scheme(s: &str) -> &str {
    if s == "postgresql" {
        "postgres"
    } else {
        s
    }
}

/// (scheme, host, port, path) of a URL.
fn endpoint(url: &str) -> Result<(String, String, u16, String), NotAllowed> {
    let u =
        reqwest::Url::parse(url).map_err(|e| NotAllowed(format!("{url:?} is not a URL: {e}")))?;
    let scheme = normal_scheme(u.scheme()).to_string();
    let port = u.port().or_else(|| default_port(&scheme)).ok_or_else(|| {
        NotAllowed(format!(
            "{url:?}: only postgres://, http:// and https:// are allowed"
        ))
    })?;
    let host = u
        .host_str()
        .ok_or_else(|| NotAllowed(format!("{url:?} names no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    Ok((
        scheme,
        host,
        port,
        u.path().trim_end_matches('/').to_string(),
    ))
}

impl Allowed {
    /// `postgres://host[:port][/db]`, `http(s)://host[:port][/path]`, `file:/directory`, or
    /// `loopback` (any port of this machine's own addresses).
    pub fn parse(entry: &str) -> Result<Allowed, NotAllowed> {
        if entry == "loopback" {
            return Ok(Allowed::Loopback);
        }
        if let Some(dir) = entry.strip_prefix("file:") {
            let p = PathBuf::from(dir);
            if !p.is_absolute() {
                return Err(NotAllowed(format!(
                    "{entry:?}: a directory must be an absolute path"
                )));
            }
            return Ok(Allowed::Directory(p));
        }
        let (scheme, host, port, path) = endpoint(entry)?;
        Ok(Allowed::Endpoint {
            scheme,
            host,
            port,
            path,
        })
    }

    /// The list a node uses when its config has none.
    pub fn defaults(data_dir: &Path) -> Vec<Allowed> {
        vec![
            Allowed::Loopback,
            Allowed::Directory(data_dir.join("exports")),
        ]
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn endpoint_allowed(list: &[Allowed], scheme: &str, host: &str, port: u16, path: &str) -> bool {
    list.iter().any(|a| match a {
        Allowed::Loopback => is_loopback(host),
        Allowed::Endpoint {
            scheme: s,
            host: h,
            port: p,
            path: prefix,
        } => {
            // A PostgreSQL database is one name ("shop/x" is another database than "shop");
            // an HTTP path allows what lies under it.
            let under = scheme != "postgres" && path.starts_with(&format!("{prefix}/"));
            s == scheme && h == host && *p == port && (prefix.is_empty() || path == prefix || under)
        }
        Allowed::Directory(_) => false,
    })
}

/// (host, port, database) of every address a PostgreSQL URL makes the client try.
fn postgres_places(url: &str) -> Result<Vec<(String, u16, String)>, NotAllowed> {
    use tokio_postgres::config::Host;
    let config: tokio_postgres::Config = url.parse().map_err(|e| NotAllowed(format!("{e}")))?;
    let ports = config.get_ports();
    let port_of = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or_default()
        .to_string();
    let mut out = Vec::new();
    for (i, host) in config.get_hosts().iter().enumerate() {
        match host {
            Host::Tcp(h) => out.push((
                h.trim_matches(['[', ']']).to_ascii_lowercase(),
                port_of(i),
                db.clone(),
            )),
            Host::Unix(p) => {
                return Err(NotAllowed(format!(
                    "a Unix socket ({}) is not a network target",
                    p.display()
                )))
            }
        }
    }
    for (i, addr) in config.get_hostaddrs().iter().enumerate() {
        out.push((addr.to_string(), port_of(i), db.clone()));
    }
    if out.is_empty() {
        return Err(NotAllowed("the URL names no host".into()));
    }
    Ok(out)
}

/// Whether `target` (as a pipeline names it) is allowed by `list`; the error says why not.
pub fn check(target: &str, list: &[Allowed]) -> Result<(), NotAllowed> {
    let parsed = PipelineTarget::parse(target)?;
    let shown = PipelineTarget::redacted(target);
    let allowed = match &parsed {
        PipelineTarget::Stdout => true,
        PipelineTarget::Flotilla(url) => {
            let (scheme, host, port, path) = endpoint(url)?;
            endpoint_allowed(list, &scheme, &host, port, &path)
        }
        // Every place the PostgreSQL client would connect to, as it reads the URL itself:
        // `?host=` and `?hostaddr=` parameters name hosts besides the URL's.
        PipelineTarget::Postgres(url) => {
            let places = postgres_places(url)
                .map_err(|e| NotAllowed(format!("pipeline target {shown}: {e}")))?;
            places.iter().all(|(host, port, db)| {
                endpoint_allowed(list, "postgres", host, *port, &format!("/{db}"))
            })
        }
        PipelineTarget::File(path) => {
            if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
                return Err(NotAllowed(format!(
                    "pipeline target {shown}: a file target must be an absolute path without `..`"
                )));
            }
            // The directory the file goes into, as it really is (symbolic links resolved).
            let parent = path.parent().unwrap_or(Path::new("/"));
            let real = parent.canonicalize().map_err(|e| {
                NotAllowed(format!(
                    "pipeline target {shown}: directory {} {e}",
                    parent.display()
                ))
            })?;
            list.iter().any(|a| match a {
                Allowed::Directory(dir) => dir.canonicalize().is_ok_and(|d| real.starts_with(d)),
                _ => false,
            })
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(NotAllowed(format!(
            "pipeline target {shown} is not allowed on this node: an operator allows targets in \
             the node's config ([pipeline-targets] allow = [\"postgres://host:port\", \
             \"https://host:port\", \"file:/directory\", \"loopback\"]); without that list only \
             this machine's own hosts and <data>/exports/ are allowed"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_allowed_only_where_listed() {
        let dir = tempfile::tempdir().unwrap();
        let exports = dir.path().join("exports");
        std::fs::create_dir_all(exports.join("sub")).unwrap();
        std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), exports.join("escape")).unwrap();
        let defaults = Allowed::defaults(dir.path());
        let e = exports.display();
        for (target, ok) in [
            ("postgres://app:secret@127.0.0.1:5432/shop", true),
            ("postgresql://localhost/shop", true),
            ("http://[::1]:4790", true),
            ("postgres://10.0.0.5:5432/shop", false),
            ("http://169.254.169.254/latest/meta-data", false),
            ("https://db.internal:4790", false),
            ("file:-", true),
            (&format!("file:{e}/out.ndjson"), true),
            (&format!("file:{e}/sub/out.ndjson"), true),
            (&format!("file:{e}/../out.ndjson"), false),
            (&format!("file:{e}/escape/out.ndjson"), false),
            ("file:/etc/passwd", false),
            ("file:relative.ndjson", false),
        ] {
            assert_eq!(
                check(target, &defaults).is_ok(),
                ok,
                "{target}: {:?}",
                check(target, &defaults)
            );
        }
        let list: Vec<Allowed> = [
            "postgres://db.internal:6432/analytics",
            "https://f2.internal:4790",
        ]
        .iter()
        .map(|s| Allowed::parse(s).unwrap())
        .collect();
        for (target, ok) in [
            ("postgres://u:p@db.internal:6432/analytics", true),
            ("postgresql://DB.INTERNAL:6432/analytics", true),
            ("postgres://db.internal:6432/other", false),
            ("postgres://db.internal:6432/analytics/x", false),
            ("postgres://db.internal:6432/analytics%2Fx", false),
            ("postgres://db.internal:5432/analytics", false),
            ("https://f2.internal:4790", true),
            ("http://f2.internal:4790", false),
            ("postgres://127.0.0.1/shop", false),
        ] {
            assert_eq!(check(target, &list).is_ok(), ok, "{target}");
        }
        // The PostgreSQL client's own host parameters count too.
        for target in [
            "postgres://u:p@127.0.0.1:5432/x?hostaddr=192.0.2.2",
            "postgres://u:p@127.0.0.1:5432/x?host=192.0.2.2",
            "postgres://u:p@127.0.0.1:5432/x?host=/var/run/postgresql",
            "postgres://u:p@localhost,192.0.2.2/x",
        ] {
            assert!(check(target, &defaults).is_err(), "{target}");
        }
        assert!(check("postgres://u:p@localhost,127.0.0.1:5433/x", &defaults).is_ok());
        let err = check("postgres://u:secret@10.1.1.1/x", &list)
            .unwrap_err()
            .0;
        assert!(
            err.contains("not allowed") && !err.contains("secret"),
            "{err}"
        );
        assert!(Allowed::parse("file:relative").is_err());
        assert_eq!(Allowed::parse("loopback").unwrap(), Allowed::Loopback);
        assert!(Allowed::parse("ftp://x").is_err());
    }
}
