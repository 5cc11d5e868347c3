//! `flotilla cluster status | add-voter | remove`: a cluster's members as one of them sees
//! them, and membership changes through its leader (docs/failover.md).

use crate::shell::render::table;
use clap::Subcommand;
use flotilla_client::Client;
use serde_json::Value;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Show the members of a cluster (`flotilla serve --cluster`), the leader and its epoch, and
    /// on the leader how far each member holds the log.
    #[command(after_help = "Examples:
  flotilla cluster status --node 127.0.0.1:4791
  flotilla cluster status --node 127.0.0.1:4792 --json")]
    Status {
        /// Any member's URL (the leader's shows each member's progress).
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        /// Print the member's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Make a learner a voter, once it has caught up. A node joins as a learner with
    /// `flotilla serve --id NAME --join HOST:PORT` (any member).
    #[command(after_help = "Examples:
  flotilla serve --id n4 --data data/n4 --listen 127.0.0.1:4794 --join 127.0.0.1:4791
  flotilla cluster add-voter --node 127.0.0.1:4791 --member n4")]
    AddVoter {
        /// Any member's URL (the request goes to the leader).
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        /// The learner's name (its --id).
        #[arg(long)]
        member: String,
    },
    /// Remove a member (a voter or a learner) from the cluster. The leader cannot be removed:
    /// hand over first (flotilla promote).
    #[command(after_help = "Examples:
  flotilla cluster remove --node 127.0.0.1:4791 --member n3")]
    Remove {
        /// Any member's URL (the request goes to the leader).
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        /// The member's name (its --id).
        #[arg(long)]
        member: String,
    },
}

/// The leader of the cluster `node` is a member of.
async fn leader_of(node: &str) -> anyhow::Result<Client> {
    let view = Client::new(node).get("/v1/cluster").await?;
    match view["leader_url"].as_str().filter(|u| !u.is_empty()) {
        Some(leader) => Ok(Client::new(leader)),
        None => anyhow::bail!(
            "the cluster has no leader right now (an election is under way); try again"
        ),
    }
}

/// One line per member of a membership answer.
fn print_membership(v: &Value) {
    let ids = |key: &str| -> Vec<u64> {
        v[key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    };
    let (voters, learners) = (ids("voters"), ids("learners"));
    for m in v["members"].as_array().into_iter().flatten() {
        let id = m["member_id"].as_u64().unwrap_or(0);
        let role = if voters.contains(&id) {
            "voter"
        } else if learners.contains(&id) {
            "learner"
        } else {
            "-"
        };
        println!(
            "{:<8}{:<8}{}",
            m["name"].as_str().unwrap_or("?"),
            role,
            m["url"].as_str().unwrap_or("?")
        );
    }
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  flotilla promote --node 127.0.0.1:4792      # n2 takes over; the old leader follows it")]
pub struct PromoteArgs {
    /// The member to lead (host:port means http://host:port). The current leader stops taking
    /// writes, lets it catch up, and hands over; nothing acknowledged is lost.
    #[arg(long)]
    node: String,
}

/// `flotilla promote`: asks the leader (found through the member named) to hand over.
pub async fn promote(a: PromoteArgs) -> anyhow::Result<()> {
    let target = Client::new(&a.node);
    let view = target.get("/v1/cluster").await?;
    let name = view["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["member_id"] == view["member_id"]))
        .and_then(|m| m["id"].as_str())
        .ok_or_else(|| anyhow::anyhow!("{} did not say which member it is", a.node))?
        .to_string();
    let Some(leader) = view["leader_url"].as_str().filter(|u| !u.is_empty()) else {
        anyhow::bail!("the cluster has no leader right now (an election is under way); try again");
    };
    let answer = Client::new(leader)
        .post(
            "/v1/cluster/promote",
            &serde_json::json!({ "member": name }),
        )
        .await?;
    println!(
        "{} leads the cluster (epoch {})",
        answer["leader"].as_str().unwrap_or(&name),
        answer["epoch"]
    );
    Ok(())
}

pub async fn run(c: ClusterCommand) -> anyhow::Result<()> {
    match c {
        ClusterCommand::Status { node, json } => {
            let v = Client::new(&node).get("/v1/cluster").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", describe(&v));
            }
            Ok(())
        }
        ClusterCommand::AddVoter { node, member } => {
            let leader = leader_of(&node).await?;
            let v = leader
                .post(
                    "/v1/cluster/members",
                    &serde_json::json!({ "member": member, "voter": true }),
                )
                .await?;
            println!("{member} is a voter");
            print_membership(&v);
            Ok(())
        }
        ClusterCommand::Remove { node, member } => {
            let leader = leader_of(&node).await?;
            let v = leader
                .delete(&format!("/v1/cluster/members/{member}"))
                .await?;
            println!("{member} left the cluster");
            print_membership(&v);
            Ok(())
        }
    }
}

/// The cluster as text: who leads in which epoch, then one row per member.
pub fn describe(v: &Value) -> String {
    let text = |x: &Value| match x {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let me = v["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["member_id"] == v["member_id"]))
        .map(|m| text(&m["id"]))
        .unwrap_or_else(|| text(&v["member_id"]));
    let mut out = format!(
        "cluster {}: epoch {}, leader {}, committed through lsn {} (asked {me}, a {})\n",
        text(&v["cluster_id"]),
        text(&v["epoch"]),
        text(&v["leader"]),
        text(&v["commit_lsn"]),
        text(&v["role"]),
    );
    let leader = v["leader"].as_str().unwrap_or("");
    let rows: Vec<Vec<String>> = v["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    let id = text(&m["id"]);
                    let role = if id == leader {
                        "leader"
                    } else if m["voter"] == true {
                        "voter"
                    } else {
                        "learner"
                    };
                    // The leader knows how far each member holds the log; its own is its last.
                    let holds = if m["member_id"] == v["member_id"] {
                        text(&v["last_lsn"])
                    } else {
                        text(&m["matched_lsn"])
                    };
                    vec![id, text(&m["url"]), role.to_string(), holds]
                })
                .collect()
        })
        .unwrap_or_default();
    let headers = ["member", "url", "role", "holds through lsn"].map(str::to_string);
    out.push_str(&table(&headers, &rows));
    out
}
