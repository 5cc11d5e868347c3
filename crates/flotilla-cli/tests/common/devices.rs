//! Offline devices: a data centre's leader with authentication on, devices registered on it,
//! raw sync requests.

use super::exe;
use flotilla_client::Client;
use flotilla_testkit::cluster::LocalNode;
use serde_json::{json, Value};

pub struct Server {
    pub node: LocalNode,
    pub admin: Client,
    pub token: String,
}

/// `serve --dc home --auth` with `extra` arguments; the admin token it wrote.
pub async fn server(root: &std::path::Path, extra: &[&str]) -> Server {
    let mut args = vec!["--dc", "home", "--auth"];
    args.extend_from_slice(extra);
    let node = LocalNode::start(&exe(), root, "home", None, &args)
        .await
        .unwrap();
    let token = std::fs::read_to_string(node.dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let admin = Client::with_token(&node.url, &token);
    Server { node, admin, token }
}

/// Registers a device; its token.
pub async fn add_device(s: &Server, name: &str, user: &str) -> String {
    s.admin
        .post("/v1/devices", &json!({ "name": name, "user": user }))
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Sets a shape (`PUT /v1/shapes`), which must be taken.
pub async fn set_shape(s: &Server, shape: Value) {
    s.admin
        .put("/v1/shapes", &shape)
        .await
        .unwrap_or_else(|e| panic!("setting the shape {shape}: {e:#}"));
}

/// Sends a raw sync request; (status, body).
pub async fn raw_sync(url: &str, token: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/sync"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Runs blocking device code from an async test.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The page assets the node embeds (`crates/flotilla-node/assets/ASSETS`) are what the npm
/// package `web/PACKAGE` builds (`build.mjs --out`, which type-checks first): a change to the
/// sources without `npm run build` would test one thing and ship another.
pub fn assert_assets_built(node: &std::path::Path, package: &str, assets: &str, files: &[&str]) {
    let manifest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let built = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(node)
        .arg("build.mjs")
        .arg("--out")
        .arg(built.path())
        .current_dir(manifest.join("../../web").join(package))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building web/{package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let embedded = manifest.join("../flotilla-node/assets").join(assets);
    for file in files {
        assert!(
            std::fs::read(built.path().join(file)).unwrap()
                == std::fs::read(embedded.join(file)).unwrap(),
            "crates/flotilla-node/assets/{assets}/{file} is not what web/{package} builds: run \
             `npm run build` in web/{package} and commit the assets"
        );
    }
}
