//! `calendar`: a terminal calendar that works on a plane. Each device (a phone, a laptop) keeps
//! its meetings in a local database (`flotilla-device`), takes new ones and edits online or
//! offline, and syncs with a Flotilla data centre when told to. Conflicting edits are settled
//! on the server by the table's policies and shown on every device.
//!
//! ```text
//! cargo run --release -p calendar -- scenario                  # the whole story, scripted
//! cargo run --release -p calendar -- server                    # a server for the commands below
//! calendar --device laptop add "Dentist" 2026-12-01T10:00 --minutes 30
//! calendar --device laptop list | edit ID --title T | delete ID | sync | offline on|off | conflicts
//! ```

mod app;
mod scenario;
mod server;

use app::{Calendar, Settings};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "calendar",
    about = "A calendar that works offline and syncs through Flotilla"
)]
struct Cli {
    /// Where devices keep their databases and settings.
    #[arg(long, default_value = "calendar-data", global = true)]
    dir: PathBuf,
    /// Which device this is (phone, laptop, …).
    #[arg(long, global = true)]
    device: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole story: a server, a phone and a laptop of one user (and a tablet of
    /// another); the phone goes offline, both edit, they sync and agree; shows the conflicts.
    Scenario,
    /// Run a data centre for devices on this machine until Ctrl-C: makes the calendar's table
    /// and shape, and devices phone and laptop of user ana, set up in --dir.
    Server {
        #[arg(long, default_value = "127.0.0.1:4799")]
        listen: String,
    },
    /// Bind this device to a server.
    Setup {
        #[arg(long)]
        server: String,
        #[arg(long)]
        token: String,
        #[arg(long)]
        user: String,
    },
    /// Add a meeting: calendar --device laptop add "Dentist" 2026-12-01T10:00 --minutes 30
    Add {
        title: String,
        starts: String,
        #[arg(long, default_value_t = 30, allow_negative_numbers = true)]
        minutes: i64,
    },
    /// The meetings, in time order.
    List,
    /// Change a meeting (its id, or the start of it, from `list`).
    Edit {
        id: String,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        starts: Option<String>,
        #[arg(long, allow_negative_numbers = true)]
        minutes: Option<i64>,
    },
    /// Delete a meeting.
    Delete { id: String },
    /// Push this device's changes and pull everyone else's.
    Sync,
    /// Switch the device offline (no sync) or back online.
    Offline {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// The conflicts the server settled on this user's meetings.
    Conflicts,
    /// Offline, syncing (n changes pending), or synced through a position.
    Status,
}

fn device(cli: &Cli) -> anyhow::Result<Calendar> {
    let Some(name) = &cli.device else {
        anyhow::bail!("which device? give --device NAME (phone, laptop, …)");
    };
    Calendar::open(&cli.dir, name)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Scenario => scenario::run(),
        Command::Server { listen } => {
            std::fs::create_dir_all(&cli.dir)?;
            let s = server::Server::start(&cli.dir.join("server"), listen)?;
            s.prepare_calendar()?;
            for name in ["phone", "laptop", "browser"] {
                if app::Settings::load(&cli.dir, name).is_ok() {
                    continue;
                }
                let token = s.add_device(name, "ana")?;
                Settings {
                    server: s.url.clone(),
                    token,
                    user: "ana".into(),
                }
                .save(&cli.dir, name)?;
            }
            println!("calendar server (data centre home) at {}", s.url);
            println!(
                "devices phone and laptop of ana are set up in {} (a terminal calendar each):",
                cli.dir.display()
            );
            println!(
                "  calendar --dir {} --device laptop sync",
                cli.dir.display()
            );
            let browser = app::Settings::load(&cli.dir, "browser")?;
            println!(
                "in a browser: open {}/calendar/ and connect as ana with the device token\n  {}\n\
                 (each browser keeps its own database; two browser profiles can share the token)",
                s.url, browser.token
            );
            println!("Ctrl-C stops it.");
            s.wait();
            Ok(())
        }
        Command::Setup {
            server,
            token,
            user,
        } => {
            let Some(name) = &cli.device else {
                anyhow::bail!("which device? give --device NAME");
            };
            Settings {
                server: server.clone(),
                token: token.clone(),
                user: user.clone(),
            }
            .save(&cli.dir, name)?;
            println!(
                "device {name} of {user} syncs with {server}; run `calendar --device {name} sync`"
            );
            Ok(())
        }
        Command::Add {
            title,
            starts,
            minutes,
        } => {
            let mut c = device(&cli)?;
            let id = c.add(title, starts, *minutes)?;
            println!(
                "added {title} at {starts} ({minutes} min) [{}]",
                app::short_id(&id)
            );
            println!("{}", c.device.status()?);
            Ok(())
        }
        Command::List => {
            let c = device(&cli)?;
            print!("{}", c.render()?);
            println!("{}", c.device.status()?);
            Ok(())
        }
        Command::Edit {
            id,
            title,
            starts,
            minutes,
        } => {
            let mut c = device(&cli)?;
            c.edit(id, title.as_deref(), starts.as_deref(), *minutes)?;
            println!("changed; {}", c.device.status()?);
            Ok(())
        }
        Command::Delete { id } => {
            let mut c = device(&cli)?;
            c.delete(id)?;
            println!("deleted; {}", c.device.status()?);
            Ok(())
        }
        Command::Sync => {
            let mut c = device(&cli)?;
            let r = c.device.sync()?;
            println!(
                "pushed {} change(s), pulled {} item(s){}; {}",
                r.pushed,
                r.pulled,
                if r.rejected > 0 {
                    format!(", {} refused by the server", r.rejected)
                } else {
                    String::new()
                },
                c.device.status()?
            );
            Ok(())
        }
        Command::Offline { state } => {
            let mut c = device(&cli)?;
            c.device.set_offline(state == "on")?;
            println!("{}", c.device.status()?);
            Ok(())
        }
        Command::Conflicts => {
            let c = device(&cli)?;
            let list = c.conflicts()?;
            if list.is_empty() {
                println!("no conflicts");
            }
            for k in list {
                println!("  {}", k.describe());
            }
            Ok(())
        }
        Command::Status => {
            let c = device(&cli)?;
            println!("{}", c.device.status()?);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("calendar: {e:#}");
            ExitCode::FAILURE
        }
    }
}
