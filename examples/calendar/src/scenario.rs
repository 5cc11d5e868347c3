//! `calendar scenario`: the story the calendar exists for, scripted and checked. A server;
//! ana's phone and laptop, bob's tablet; the phone edits on a flight while the laptop edits
//! the same meetings; both sync; every copy agrees with the server, the conflicts are shown on
//! both, and bob never sees ana's meetings. Exits non-zero if anything disagrees.

use crate::app::{Calendar, Settings};
use crate::server::Server;
use anyhow::{bail, ensure};

fn step(title: &str) {
    println!("\n== {title}");
}

fn show(c: &Calendar) -> anyhow::Result<()> {
    println!("{} ({}):", c.name, c.device.status()?.state());
    print!("{}", c.render()?);
    Ok(())
}

fn id_of(c: &Calendar, title: &str) -> anyhow::Result<String> {
    c.list()?
        .into_iter()
        .find(|e| e.title == title)
        .map(|e| e.id)
        .ok_or_else(|| anyhow::anyhow!("{} has no meeting {title:?}", c.name))
}

fn sync(c: &mut Calendar) -> anyhow::Result<()> {
    let r = c.device.sync()?;
    println!(
        "{} synced: pushed {}, pulled {} item(s), {} bytes sent, {} received",
        c.name, r.pushed, r.pulled, r.bytes_sent, r.bytes_received
    );
    Ok(())
}

/// The meetings as (title, starts, minutes), for comparing copies.
fn agenda(c: &Calendar) -> anyhow::Result<Vec<(String, String, i64)>> {
    Ok(c.list()?
        .into_iter()
        .map(|e| (e.title, e.starts, e.minutes))
        .collect())
}

pub fn run() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("calendar-scenario-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let outcome = story(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn story(dir: &std::path::Path) -> anyhow::Result<()> {
    step("A server: data centre \"home\", each user's meetings are their devices' shape");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0")?;
    server.prepare_calendar()?;
    println!("server at {}", server.url);
    println!("shape: events where owner = :user; a delete racing an edit: update-wins");

    step("Three devices: ana's phone and laptop, bob's tablet");
    let open = |name: &str, user: &str| -> anyhow::Result<Calendar> {
        let token = server.add_device(name, user)?;
        let s = Settings {
            server: server.url.clone(),
            token,
            user: user.into(),
        };
        Calendar::open_at(&dir.join(format!("{name}.db")), name, &s)
    };
    let mut phone = open("phone", "ana")?;
    let mut laptop = open("laptop", "ana")?;
    let mut tablet = open("tablet", "bob")?;
    for c in [&mut phone, &mut laptop, &mut tablet] {
        sync(c)?;
    }

    step("The laptop plans the week; everyone syncs");
    laptop.add("Team standup", "2026-12-01T09:00", 15)?;
    laptop.add("Dentist", "2026-12-01T10:00", 30)?;
    tablet.add("Bob's 1:1", "2026-12-01T09:00", 30)?;
    for c in [&mut laptop, &mut tablet, &mut phone] {
        sync(c)?;
    }
    show(&phone)?;
    show(&tablet)?;

    step("The phone boards a plane (offline) and edits; the laptop edits the same meetings");
    phone.device.set_offline(true)?;
    let standup = id_of(&phone, "Team standup")?;
    let dentist = id_of(&phone, "Dentist")?;
    phone.edit(&standup, Some("Standup (room B)"), None, None)?;
    phone.edit(&dentist, None, Some("2026-12-01T11:00"), None)?;
    phone.add("Flight home", "2026-12-01T18:00", 120)?;
    match phone.device.sync() {
        Err(flotilla_device::DeviceError::Offline) => {
            println!(
                "phone: cannot sync on the plane — {}",
                phone.device.status()?
            )
        }
        other => bail!("the phone synced while offline: {other:?}"),
    }
    laptop.edit(&standup, Some("Standup (moved online)"), None, None)?;
    laptop.delete(&dentist)?;
    sync(&mut laptop)?;
    show(&phone)?;
    show(&laptop)?;

    step("The phone lands and syncs; then the laptop");
    phone.device.set_offline(false)?;
    sync(&mut phone)?;
    sync(&mut laptop)?;
    show(&phone)?;
    show(&laptop)?;

    step("Conflicts, as both devices see them");
    let on_phone = phone.conflicts()?;
    for k in &on_phone {
        println!("  {}", k.describe());
    }

    step("Check");
    let server_view = server.events_of("ana")?;
    let (p, l) = (agenda(&phone)?, agenda(&laptop)?);
    ensure!(
        p == server_view,
        "the phone {p:?} differs from the server {server_view:?}"
    );
    ensure!(
        l == server_view,
        "the laptop {l:?} differs from the server {server_view:?}"
    );
    ensure!(
        on_phone == laptop.conflicts()?,
        "the phone and the laptop show different conflicts"
    );
    ensure!(
        !on_phone.is_empty(),
        "the concurrent edits recorded no conflict"
    );
    ensure!(
        p.iter()
            .any(|e| e.0 == "Dentist" && e.1 == "2026-12-01T11:00"),
        "update-wins: the moved dentist should survive the delete, at 11:00: {p:?}"
    );
    ensure!(
        p.iter().any(|e| e.0 == "Flight home"),
        "the meeting made on the plane is missing: {p:?}"
    );
    let bob = agenda(&tablet)?;
    ensure!(
        bob == vec![("Bob's 1:1".to_string(), "2026-12-01T09:00".to_string(), 30)],
        "bob's tablet holds {bob:?}"
    );
    println!(
        "agreed: phone, laptop and server hold the same {} meetings, both devices show the \
         same {} conflict(s), and bob's tablet holds only bob's meeting",
        p.len(),
        on_phone.len()
    );
    Ok(())
}
