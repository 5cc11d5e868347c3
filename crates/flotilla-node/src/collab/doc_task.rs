//! One open document's task: the y-websocket protocol with each editor (sync step 1 and 2,
//! updates, awareness), the merged document in memory, and its group commits.
//!
//! Order of work for an update: decoded (a malformed one closes its connection, the document
//! untouched), merged, relayed to every other editor at once, then stored with whatever else
//! arrived by the next commit (at most one commit in flight per document, the next one at
//! least [`COMMIT_INTERVAL_MS`] after the last began). An editor hears of its edit's storage
//! no more than a stock Yjs server tells it: Yjs clients keep their edits and send what the
//! server lacks each time they connect, so a server that stops between relay and commit loses
//! nothing its editors still hold.
//!
//! The task also follows what others store into the document: on a follower, every update the
//! leader's commits bring (its viewers read along, live); on a leader, what a merge from
//! another data centre or a device stored. It reads the updates stored after the last it has
//! merged, merges them and relays what they add.

use super::text_edit::text_edit;
use super::{DocEvent, DocHub, EditorOut, LockAction, LockRefused, LockState};
use crate::leader::{ChangeError, CollabChange, WriteJob};
use crate::node::Node;
use flotilla_store::collab::{crdt, CollabError, DocWrite, DocWritten, ResolvedDoc, StoredDoc};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use yrs::encoding::read::Cursor;
use yrs::sync::protocol::{Message, SyncMessage};
use yrs::sync::Awareness;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, StateVector, Text, TextRef, Transact};

/// An editor connection's number (unique in this process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// What the task sends an editor's connection.
#[derive(Debug)]
pub enum Outgoing {
    /// `whole`: a whole document (see `EditorOut::push_whole`).
    Binary { bytes: Vec<u8>, whole: bool },
    /// Close the WebSocket with this code and reason (the connection ends).
    Close { code: u16, reason: String },
}

/// The shortest time between two commits of one document: keystrokes in between share one.
pub const COMMIT_INTERVAL_MS: u64 = 10;

use flotilla_store::collab::COMPACT_MIN_BYTES;

pub use crdt::{MAX_DOCUMENT_BYTES, MAX_NEW_WRITERS_PER_UPDATE};

/// Writers new to the document one connection may bring in all (a flood of updates of 64 new
/// writers each cost 56 ms of CPU per update and growing).
pub const MAX_NEW_WRITERS_PER_CONNECTION: usize = 256;

/// Updates at least this large (or bringing new writers) are merged off the runtime's worker
/// (`block_in_place`), so that a costly merge holds up its document only, not the node.
const LARGE_UPDATE_BYTES: usize = 16 << 10;

/// Presence entries (Yjs clients) one connection may announce; more are ignored.
const MAX_PRESENCE_PER_CONN: usize = 16;
/// The largest presence state (JSON) relayed.
const MAX_PRESENCE_BYTES: usize = 16 << 10;

/// What a connection whose token may not write hears (at once, and for each edit refused).
const READ_ONLY: &str = "this token may read the document, not edit it";

/// On a follower, the shortest time between two reads of what the leader's commits stored:
/// the commits of several documents at once share them.
const FOLLOW_INTERVAL_MS: u64 = 20;

/// WebSocket close codes.
const CLOSE_BAD_DATA: u16 = 1007;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_ERROR: u16 = 1011;

/// The longest lease a lock may be taken for (renewing extends it).
pub const MAX_LEASE_MS: u64 = 10 * 60 * 1000;

struct Editor {
    out: EditorOut,
    can_edit: bool,
    /// The lock this editor presented.
    lock: Option<String>,
    presence: HashSet<yrs::block::ClientID>,
    /// Writers new to the document this connection's updates brought.
    new_writers: usize,
}

/// Lock-based mode: while a lock is held, only editors presenting it edit.
struct Lock {
    id: String,
    holder: String,
    expires: Instant,
}

struct State {
    doc: ResolvedDoc,
    awareness: Awareness,
    text: TextRef,
    /// What the document's observer produced and the task has not handled yet.
    produced: Arc<Mutex<Vec<Vec<u8>>>>,
    editors: HashMap<ConnId, Editor>,
    /// Merged, relayed, not yet stored.
    pending: Vec<Vec<u8>>,
    in_flight: bool,
    last_commit: Instant,
    /// Bytes stored as updates since the state was compacted, and the state's size.
    since_compaction: usize,
    state_bytes: usize,
    lock: Option<Lock>,
    /// Whether this node led when the task began: a leader's task stores its editors' edits,
    /// a follower's only follows the leader's (its editors read).
    leading: bool,
    /// The writers (client numbers) the document holds edits of (see
    /// `MAX_NEW_WRITERS_PER_UPDATE`), kept rather than read from its state vector for each
    /// keystroke (a document edited for a year has thousands).
    known_writers: HashSet<yrs::block::ClientID>,
    /// Every stored update up to this number is merged in memory (see `StoredDoc`): the base
    /// of the next commit (see `DocWrite::base_seq`).
    seen_seq: i64,
}

/// Following what others store into the document.
struct Follow {
    /// Something was stored the task has not read yet.
    wanted: bool,
    in_flight: bool,
    last: Instant,
}

/// What a read of the stored document found.
enum Followed {
    Stored(StoredDoc),
    /// The document's row was deleted (or its column is no longer collaborative).
    Gone(String),
}

/// Runs the document until it is idle (or fails): see the module's docs.
pub async fn run(
    hub: Arc<DocHub>,
    node: Arc<Node>,
    doc: ResolvedDoc,
    mut rx: mpsc::UnboundedReceiver<DocEvent>,
) {
    let address = doc.address();
    // Watched before the document is read: a commit of the leader applied between the read
    // and the watch would otherwise go unnoticed (a follower's viewer would wait for it
    // until the next one).
    let mut position = node.position.subscribe();
    let mut st = match open(&node, doc).await {
        Ok(st) => st,
        Err(why) => {
            tracing::warn!(document = %address, "cannot open the document: {why}");
            return fail(&hub, &address, &mut rx, &why, None);
        }
    };
    let (done_tx, mut done_rx) = mpsc::channel::<Result<DocWritten, ChangeError>>(1);
    let (followed_tx, mut followed_rx) = mpsc::channel::<Result<Followed, String>>(1);
    let mut follow = Follow {
        wanted: false,
        in_flight: false,
        last: Instant::now(),
    };
    loop {
        let commit_at = st.last_commit + Duration::from_millis(COMMIT_INTERVAL_MS);
        let want_commit = !st.pending.is_empty() && !st.in_flight;
        let lock_expires = st.lock.as_ref().map(|l| l.expires);
        let follow_at = follow.last + Duration::from_millis(FOLLOW_INTERVAL_MS);
        let want_follow = follow.wanted && !follow.in_flight;
        tokio::select! {
            // A follower's position moves with each commit of the leader it applies.
            Ok(()) = position.changed(), if !st.leading => follow.wanted = true,
            _ = tokio::time::sleep_until(follow_at), if want_follow => {
                follow.wanted = false;
                follow.in_flight = true;
                follow.last = Instant::now();
                st.read_stored(&node, followed_tx.clone());
            }
            Some(found) = followed_rx.recv() => {
                follow.in_flight = false;
                match found {
                    Ok(Followed::Stored(stored)) => {
                        if let Err(why) = st.merge_stored(stored) {
                            return fail(&hub, &address, &mut rx, &why, Some((&mut st, CLOSE_ERROR)));
                        }
                    }
                    Ok(Followed::Gone(why)) => {
                        return fail(&hub, &address, &mut rx, &why, Some((&mut st, CLOSE_POLICY)));
                    }
                    Err(why) => {
                        // Read again at the next position (a reader may fail while the
                        // follower rebuilds its replica).
                        tracing::debug!(document = %address, "cannot read the stored document: {why}");
                    }
                }
            }
            _ = tokio::time::sleep_until(lock_expires.unwrap_or_else(Instant::now)), if lock_expires.is_some() => {
                st.lock = None;
                st.announce_lock();
            }
            ev = rx.recv() => match ev {
                Some(DocEvent::Stored) => follow.wanted = true,
                Some(ev) => {
                    if st.leading != node.leader().is_some() {
                        // The node was elected, or stepped down, since the task began: its
                        // editors reconnect to a task of the node's new role.
                        let why = "this node's role changed: reconnect";
                        if let DocEvent::Join { out, .. } = ev {
                            out.close(CLOSE_GOING_AWAY, why);
                        }
                        return fail(&hub, &address, &mut rx, why, Some((&mut st, CLOSE_GOING_AWAY)));
                    }
                    st.handle(ev)
                }
                None => return,
            },
            Some(done) = done_rx.recv() => {
                st.in_flight = false;
                match done {
                    // The commit's base was what was stored: its document holds everything
                    // stored up to its own update.
                    Ok(w) if w.was_current => st.seen_seq = st.seen_seq.max(w.last_seq),
                    // Something else was stored meanwhile (its text was read from storage):
                    // the document reads it too.
                    Ok(_) => follow.wanted = true,
                    Err(e) => {
                        let why = format!("the document could not be stored: {e}");
                        tracing::warn!(document = %address, "{why}");
                        let code = match e {
                            ChangeError::Collab(CollabError::NotFound(_)) => CLOSE_POLICY,
                            _ => CLOSE_ERROR,
                        };
                        return fail(&hub, &address, &mut rx, &why, Some((&mut st, code)));
                    }
                }
            }
            _ = tokio::time::sleep_until(commit_at), if want_commit => {
                if let Err(why) = st.commit(&node, done_tx.clone()) {
                    return fail(&hub, &address, &mut rx, &why, Some((&mut st, CLOSE_GOING_AWAY)));
                }
            }
            _ = node.shutdown.cancelled() => {
                // Editors reconnect to the node that leads next, with their edits.
                st.close_all(CLOSE_GOING_AWAY, "the node is stopping");
                return;
            }
        }
        if st.editors.is_empty()
            && st.lock.is_none()
            && st.pending.is_empty()
            && !st.in_flight
            && !follow.in_flight
            && hub.leave_if_idle(&address, &mut rx)
        {
            return;
        }
    }
}

/// Ends a task that cannot go on: out of the hub first (a new editor starts afresh from what is
/// stored), then every editor it has or was about to have is told why.
fn fail(
    hub: &DocHub,
    address: &str,
    rx: &mut mpsc::UnboundedReceiver<DocEvent>,
    why: &str,
    st: Option<(&mut State, u16)>,
) {
    hub.remove(address);
    rx.close();
    let code = st.as_ref().map_or(CLOSE_ERROR, |s| s.1);
    if let Some((st, code)) = st {
        st.close_all(code, why);
    }
    while let Ok(ev) = rx.try_recv() {
        if let DocEvent::Join { out, .. } = ev {
            out.close(code, why);
        }
    }
}

/// Reads the document and builds it in memory.
async fn open(node: &Arc<Node>, doc: ResolvedDoc) -> Result<State, String> {
    let d = doc.clone();
    // The row's text and the stored document are read together (one read transaction): a
    // merge from another data centre may store into both meanwhile.
    let (doc, stored): (ResolvedDoc, StoredDoc) = super::read_own(node, move |conn| {
        let read = conn.unchecked_transaction().map_err(|e| e.to_string())?;
        let c = &d.column;
        let doc = flotilla_store::collab::resolve_doc(&read, &c.table, &d.key, &c.column)
            .map_err(|e| e.to_string())?;
        let stored = flotilla_store::collab::load_doc(&read, &doc).map_err(|e| e.to_string())?;
        Ok::<_, String>((doc, stored))
    })
    .await??;
    let ydoc = crdt::new_doc();
    let text = ydoc.get_or_insert_text(crdt::TEXT_NAME);
    let produced: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let sink = produced.clone();
    ydoc.observe_update_v1("flotilla", move |_, e| {
        sink.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e.update.clone());
    })
    .map_err(|e| e.to_string())?;
    let leading = node.leader().is_some();
    let seen_seq = stored.last_seq;
    let state_bytes = stored.state.as_ref().map_or(0, Vec::len);
    let since_compaction = stored.updates.iter().map(Vec::len).sum();
    let stored_nothing = stored.state.is_none() && stored.updates.is_empty();
    crdt::apply_stored(&ydoc, &stored)?;
    // What was stored is not produced again.
    produced.lock().unwrap_or_else(|p| p.into_inner()).clear();
    if !leading {
        // A follower's task only follows: what the row holds is the leader's business.
    } else if stored_nothing && !doc.text.is_empty() {
        // The row's text before the column became collaborative: the document's first content.
        crdt::apply_updates(&ydoc, [&crdt::first_content(&doc.address(), &doc.text)])?;
    } else {
        // The row's text was changed by other means (a restore, an older build): the document
        // takes the change as an edit.
        let now = text.get_string(&ydoc.transact());
        if let Some(edit) = text_edit(&now, &doc.text) {
            let mut txn = ydoc.transact_mut();
            if edit.delete > 0 {
                text.remove_range(&mut txn, edit.at, edit.delete);
            }
            if !edit.insert.is_empty() {
                text.insert(&mut txn, edit.at, &edit.insert);
            }
        }
    }
    let pending = std::mem::take(&mut *produced.lock().unwrap_or_else(|p| p.into_inner()));
    let known_writers = writers_of(&ydoc);
    Ok(State {
        doc,
        awareness: Awareness::new(ydoc),
        text,
        produced,
        editors: HashMap::new(),
        pending,
        in_flight: false,
        last_commit: Instant::now() - Duration::from_millis(COMMIT_INTERVAL_MS),
        since_compaction,
        state_bytes,
        lock: None,
        leading,
        seen_seq,
        known_writers,
    })
}

/// A lock's id: 128 random bits, hex.
fn new_lock_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The y-websocket messages in one WebSocket message, every byte accounted for: a message cut
/// short or followed by stray bytes is malformed (yrs's own reader stops quietly at a cut).
fn decode_messages(bytes: &[u8]) -> Result<Vec<Message>, yrs::encoding::read::Error> {
    use yrs::encoding::read::Read;
    use yrs::sync::protocol::{MSG_AUTH, MSG_QUERY_AWARENESS, MSG_SYNC, PERMISSION_DENIED};
    let mut cursor = Cursor::new(bytes);
    let mut out = Vec::new();
    while cursor.has_content() {
        let start = cursor.next;
        match cursor.read_var::<u8>()? {
            MSG_SYNC => {
                cursor.read_var::<u8>()?;
                plausible_count(cursor.read_buf()?)?;
            }
            MSG_AUTH => {
                if cursor.read_var::<u8>()? == PERMISSION_DENIED {
                    cursor.read_string()?;
                }
            }
            MSG_QUERY_AWARENESS => {}
            // Awareness, and messages of other kinds (passed over), carry one buffer.
            _ => {
                plausible_count(cursor.read_buf()?)?;
            }
        }
        out.push(Message::decode_v1(&bytes[start..cursor.next])?);
    }
    Ok(out)
}

/// A state vector, an update and a presence update each start with a count of what follows;
/// each of those takes a byte at least. A count beyond the buffer's length is a lie that would
/// make the decoder reserve memory for it (a 10-byte message claiming 500 million entries).
fn plausible_count(buf: &[u8]) -> Result<(), yrs::encoding::read::Error> {
    use yrs::encoding::read::Read;
    if buf.is_empty() {
        return Ok(());
    }
    let count: u64 = Cursor::new(buf).read_var()?;
    if count > buf.len() as u64 {
        return Err(yrs::encoding::read::Error::Custom(format!(
            "it claims {count} entries in {} bytes",
            buf.len()
        )));
    }
    Ok(())
}

/// `update` (the edits merged into the document since its last commit), or the same edits
/// as the document encodes them now — deleted text collected — when that is smaller.
fn smaller_equivalent(txn: &yrs::Transaction, update: Vec<u8>) -> Vec<u8> {
    let Ok(decoded) = yrs::Update::decode_v1(&update) else {
        return update;
    };
    // What the document held before these edits: its state, but where the update starts.
    let mut before = txn.state_vector();
    for (client, clock) in decoded.state_vector_lower().iter() {
        before.set_min(*client, *clock);
    }
    let now = txn.encode_diff_v1(&before);
    if now.len() < update.len() {
        now
    } else {
        update
    }
}

/// Whether `doc` holds edits it could not merge yet (waiting for edits they depend on).
fn dangling(doc: &yrs::Doc) -> bool {
    let txn = doc.transact();
    let store = txn.store();
    store.pending_update().is_some_and(|p| !p.update.is_empty())
        || store.pending_ds().is_some_and(|d| !d.is_empty())
}

/// Forgets the edits `doc` could not merge (see `dangling`).
fn drop_dangling(doc: &yrs::Doc) {
    use yrs::WriteTxn;
    let mut txn = doc.transact_mut();
    let store = txn.store_mut();
    if let Some(p) = store.pending_update_mut() {
        p.update = yrs::Update::new();
        p.missing = StateVector::default();
    }
    if let Some(d) = store.pending_ds_mut() {
        *d = yrs::IdSet::default();
    }
}

/// The writers `doc` holds edits of.
fn writers_of(doc: &yrs::Doc) -> HashSet<yrs::block::ClientID> {
    let sv = doc.transact().state_vector();
    sv.iter().map(|(c, _)| *c).collect()
}

fn encode(msg: Message) -> Vec<u8> {
    msg.encode_v1()
}

impl State {
    fn handle(&mut self, ev: DocEvent) {
        match ev {
            DocEvent::Join {
                conn,
                out,
                can_edit,
                lock,
            } => {
                // The server speaks first (as y-websocket's does): what it has, then who is here.
                let sv = self.awareness.doc().transact().state_vector();
                out.push(encode(Message::Sync(SyncMessage::SyncStep1(sv))));
                if let Ok(update) = self.awareness.update() {
                    if !update.clients.is_empty() {
                        out.push(encode(Message::Awareness(update)));
                    }
                }
                let editor = Editor {
                    out,
                    can_edit,
                    lock,
                    presence: HashSet::new(),
                    new_writers: 0,
                };
                // Said at once, so an editor can show the document read-only — or editable again
                // (a page refused before it reconnected with the lock it took).
                let said = Message::Auth(self.refusal(&editor));
                editor.out.push(encode(said));
                self.editors.insert(conn, editor);
            }
            DocEvent::Message { conn, batch, .. } => {
                for bytes in batch {
                    if let Err((code, why)) = self.on_message(conn, &bytes) {
                        self.drop_editor(conn, code, &why);
                        break;
                    }
                }
            }
            DocEvent::Leave { conn } => {
                if let Some(editor) = self.editors.remove(&conn) {
                    self.forget_presence(editor.presence);
                }
            }
            DocEvent::Lock { action, reply } => {
                let _ = reply.send(self.on_lock(action));
            }
            DocEvent::Stored => {}
        }
    }

    /// Why `editor`'s edits are not taken now, if they are not.
    fn refusal(&self, editor: &Editor) -> Option<String> {
        if !self.leading {
            return Some(
                "this node is a follower: it shows the document as the leader stores it, live; \
                 edit it on the leader"
                    .into(),
            );
        }
        if !editor.can_edit {
            return Some(READ_ONLY.into());
        }
        match &self.lock {
            Some(l) if editor.lock.as_deref() != Some(l.id.as_str()) => Some(format!(
                "the document is locked by {} (lock-based mode): it reads only until the lock \
                 is released or expires",
                l.holder
            )),
            _ => None,
        }
    }

    fn on_lock(&mut self, action: LockAction) -> Result<Option<LockState>, LockRefused> {
        let now = Instant::now();
        let held = self.lock.as_ref().filter(|l| l.expires > now);
        let result = match action {
            LockAction::Take {
                holder,
                lease_ms,
                renew,
            } => {
                match (held, &renew) {
                    (Some(l), Some(id)) if *id == l.id => {}
                    (Some(l), _) => {
                        return Err(LockRefused::Held {
                            holder: l.holder.clone(),
                            left_ms: (l.expires - now).as_millis() as u64,
                        })
                    }
                    (None, Some(id)) => return Err(LockRefused::NotHeld(id.clone())),
                    (None, None) => {}
                }
                let lease_ms = lease_ms.clamp(1, MAX_LEASE_MS);
                // A renewal keeps its holder's name.
                let holder = held.map_or(holder, |l| l.holder.clone());
                let id = renew.unwrap_or_else(new_lock_id);
                self.lock = Some(Lock {
                    id: id.clone(),
                    holder: holder.clone(),
                    expires: now + Duration::from_millis(lease_ms),
                });
                Some(LockState {
                    lock: id,
                    holder,
                    expires_in_ms: lease_ms,
                })
            }
            LockAction::Release { lock } => match held {
                Some(l) if l.id == lock => {
                    self.lock = None;
                    None
                }
                _ => return Err(LockRefused::NotHeld(lock)),
            },
        };
        self.announce_lock();
        Ok(result)
    }

    /// Tells every editor whether it may edit now (after the lock changed hands).
    fn announce_lock(&mut self) {
        let mut behind = Vec::new();
        for (id, e) in &self.editors {
            if !e.can_edit || !self.leading {
                continue;
            }
            let msg = Message::Auth(self.refusal(e));
            if !e.out.push(encode(msg)) {
                behind.push(*id);
            }
        }
        for id in behind {
            self.drop_editor(id, CLOSE_POLICY, "too far behind: reconnect to resync");
        }
    }

    fn on_message(&mut self, conn: ConnId, bytes: &[u8]) -> Result<(), (u16, String)> {
        let Some(editor) = self.editors.get(&conn) else {
            return Ok(());
        };
        let refusal = self.refusal(editor);
        let messages = decode_messages(bytes)
            .map_err(|e| (CLOSE_BAD_DATA, format!("malformed message: {e}")))?;
        for msg in messages {
            match msg {
                Message::Sync(SyncMessage::SyncStep1(sv)) => {
                    let diff = self.awareness.doc().transact().encode_diff_v1(&sv);
                    let msg = encode(Message::Sync(SyncMessage::SyncStep2(diff)));
                    match self.editors.get(&conn) {
                        Some(e) if !e.out.push_whole(msg) => {
                            return Err((
                                CLOSE_POLICY,
                                "too far behind: reconnect to resync".into(),
                            ))
                        }
                        _ => {}
                    }
                }
                Message::Sync(SyncMessage::SyncStep2(u))
                | Message::Sync(SyncMessage::Update(u)) => {
                    let update = yrs::Update::decode_v1(&u)
                        .map_err(|e| (CLOSE_BAD_DATA, format!("malformed update: {e}")))?;
                    // Bounded: what is stored (the text with every commit) must fit a commit,
                    // and a resync must fit a message.
                    // An update that inserts nothing (deletes, an empty answer) does not grow it.
                    let text_now = self.text.len(&self.awareness.doc().transact()) as usize;
                    let update_sv = update.state_vector();
                    let inserts = !update_sv.is_empty();
                    if inserts && text_now + u.len() > MAX_DOCUMENT_BYTES {
                        return Err((
                            CLOSE_POLICY,
                            format!(
                                "the update would make the document larger than its limit of {} MiB",
                                MAX_DOCUMENT_BYTES >> 20
                            ),
                        ));
                    }
                    if let Some(why) = refusal.clone() {
                        // A reader's client answers the server's step 1 with what it has; an
                        // empty answer is no edit.
                        if !inserts && update.delete_set().is_empty() {
                            continue;
                        }
                        self.send(conn, encode(Message::Auth(Some(why))))?;
                        continue;
                    }
                    // (Empty, so not allocated, for a keystroke of a known writer.)
                    let new: HashSet<yrs::block::ClientID> = crdt::writers(&update_sv, &update)
                        .filter(|c| !self.known_writers.contains(c))
                        .collect();
                    let new_writers = new.len();
                    if new_writers > MAX_NEW_WRITERS_PER_UPDATE {
                        return Err((
                            CLOSE_POLICY,
                            format!(
                                "the update brings {new_writers} writers the document has not \
                                 seen; an update may bring {MAX_NEW_WRITERS_PER_UPDATE} at most"
                            ),
                        ));
                    }
                    if let Some(e) = self.editors.get_mut(&conn) {
                        e.new_writers += new_writers;
                        if e.new_writers > MAX_NEW_WRITERS_PER_CONNECTION {
                            return Err((
                                CLOSE_POLICY,
                                format!(
                                    "this connection's updates brought {} writers the document \
                                     had not seen; a connection may bring \
                                     {MAX_NEW_WRITERS_PER_CONNECTION} at most",
                                    e.new_writers
                                ),
                            ));
                        }
                    }
                    let doc = self.awareness.doc();
                    let dangling_before = dangling(doc);
                    let apply = || doc.transact_mut().apply_update(update);
                    // A keystroke of a writer the document knows merges inline (cheap); the
                    // rest — a large update, new writers (once per session) — off the worker.
                    let costly = u.len() >= LARGE_UPDATE_BYTES || new_writers > 0;
                    let applied = if costly {
                        tokio::task::block_in_place(apply)
                    } else {
                        apply()
                    };
                    applied.map_err(|e| (CLOSE_BAD_DATA, format!("update refused: {e}")))?;
                    self.known_writers.extend(new);
                    // What of it the document could take is merged; what depends on edits it
                    // lacks would wait in memory, uncounted (a few small updates sent later
                    // could then bring megabytes in at once): set aside, and the sender told.
                    let set_aside = !dangling_before && dangling(self.awareness.doc());
                    if set_aside {
                        drop_dangling(self.awareness.doc());
                    }
                    self.relay_produced(conn);
                    if set_aside {
                        return Err((
                            CLOSE_POLICY,
                            "the update depends on edits the document does not have (a Yjs \
                             client sends its edits in order): its rest was set aside; \
                             reconnect to resync"
                                .into(),
                        ));
                    }
                }
                Message::Awareness(update) => self.on_presence(conn, update)?,
                Message::AwarenessQuery => {
                    if let Ok(update) = self.awareness.update() {
                        self.send(conn, encode(Message::Awareness(update)))?;
                    }
                }
                Message::Auth(_) | Message::Custom(..) => {}
            }
        }
        Ok(())
    }

    /// Relays what the last merge added to everyone but `from`, and queues it for storage.
    fn relay_produced(&mut self, from: ConnId) {
        let produced =
            std::mem::take(&mut *self.produced.lock().unwrap_or_else(|p| p.into_inner()));
        for update in produced {
            let msg = encode(Message::Sync(SyncMessage::Update(update.clone())));
            self.broadcast(Some(from), &msg);
            self.pending.push(update);
        }
    }

    fn on_presence(
        &mut self,
        conn: ConnId,
        mut update: yrs::sync::awareness::AwarenessUpdate,
    ) -> Result<(), (u16, String)> {
        // Presence is relayed as JSON to every editor, whose clients parse it.
        if let Some(bad) = update
            .clients
            .values()
            .find(|e| serde_json::from_str::<serde_json::Value>(&e.json).is_err())
        {
            let start: String = bad.json.chars().take(40).collect();
            return Err((
                CLOSE_BAD_DATA,
                format!("malformed presence: not JSON ({start:?}…)"),
            ));
        }
        // A client number announced by another connection is that connection's.
        let others: HashSet<yrs::block::ClientID> = self
            .editors
            .iter()
            .filter(|(id, _)| **id != conn)
            .flat_map(|(_, e)| e.presence.iter().copied())
            .collect();
        let Some(editor) = self.editors.get_mut(&conn) else {
            return Ok(());
        };
        update.clients.retain(|client, entry| {
            if entry.json.len() > MAX_PRESENCE_BYTES || others.contains(client) {
                return false;
            }
            if editor.presence.contains(client) {
                return true;
            }
            if editor.presence.len() >= MAX_PRESENCE_PER_CONN {
                return false;
            }
            editor.presence.insert(*client);
            true
        });
        if update.clients.is_empty() {
            return Ok(());
        }
        let msg = encode(Message::Awareness(update.clone()));
        if self.awareness.apply_update(update).is_ok() {
            self.broadcast(Some(conn), &msg);
        }
        Ok(())
    }

    /// A departed editor's presence goes, and everyone hears it.
    fn forget_presence(&mut self, presence: HashSet<yrs::block::ClientID>) {
        if presence.is_empty() {
            return;
        }
        for client in &presence {
            self.awareness.remove_state(*client);
        }
        if let Ok(update) = self.awareness.update_with_clients(presence) {
            let msg = encode(Message::Awareness(update));
            self.broadcast(None, &msg);
        }
    }

    fn send(&mut self, conn: ConnId, msg: Vec<u8>) -> Result<(), (u16, String)> {
        match self.editors.get(&conn) {
            Some(e) if e.out.push(msg) => Ok(()),
            Some(_) => Err((CLOSE_POLICY, "too far behind: reconnect to resync".into())),
            None => Ok(()),
        }
    }

    fn broadcast(&mut self, except: Option<ConnId>, msg: &[u8]) {
        let mut behind = Vec::new();
        for (id, e) in &self.editors {
            if Some(*id) == except {
                continue;
            }
            if !e.out.push(msg.to_vec()) {
                behind.push(*id);
            }
        }
        for id in behind {
            self.drop_editor(id, CLOSE_POLICY, "too far behind: reconnect to resync");
        }
    }

    fn drop_editor(&mut self, conn: ConnId, code: u16, why: &str) {
        if let Some(editor) = self.editors.remove(&conn) {
            editor.out.close(code, why);
            self.forget_presence(editor.presence);
        }
    }

    fn close_all(&mut self, code: u16, why: &str) {
        for (_, e) in self.editors.drain() {
            e.out.close(code, why);
        }
    }

    /// Reads what was stored after the newest update merged here; the answer arrives on `found`.
    fn read_stored(&self, node: &Arc<Node>, found: mpsc::Sender<Result<Followed, String>>) {
        let node = node.clone();
        let doc = self.doc.clone();
        let seen = self.seen_seq;
        tokio::spawn(async move {
            let read = super::read_own(&node, move |conn| {
                let c = &doc.column;
                match flotilla_store::collab::resolve_doc(conn, &c.table, &doc.key, &c.column) {
                    Ok(_) => {}
                    Err(CollabError::NotFound(why)) => return Ok(Followed::Gone(why)),
                    Err(e) => return Err(e.to_string()),
                }
                flotilla_store::collab::load_doc_since(conn, &doc, Some(seen))
                    .map(Followed::Stored)
                    .map_err(|e| e.to_string())
            })
            .await
            .and_then(|r| r);
            let _ = found.send(read).await;
        });
    }

    /// Merges what others stored into the document and relays what it adds to every editor.
    fn merge_stored(&mut self, stored: StoredDoc) -> Result<(), String> {
        if stored.state.is_none() && stored.updates.is_empty() {
            return Ok(());
        }
        crdt::apply_stored(self.awareness.doc(), &stored)?;
        self.seen_seq = self.seen_seq.max(stored.last_seq);
        if self.leading {
            // Followers take no edits: they need not know.
            self.known_writers = writers_of(self.awareness.doc());
        }
        let produced =
            std::mem::take(&mut *self.produced.lock().unwrap_or_else(|p| p.into_inner()));
        if produced.is_empty() {
            return Ok(());
        }
        // Stored already: relayed, not stored again (a commit racing with it stored the text
        // with it: see `DocWrite::base_seq`).
        for update in produced {
            let msg = encode(Message::Sync(SyncMessage::Update(update)));
            self.broadcast(None, &msg);
        }
        Ok(())
    }

    /// Starts the next group commit: everything merged since the last, the text, and (when
    /// due) the compacted document. Its outcome arrives on `done`.
    fn commit(
        &mut self,
        node: &Arc<Node>,
        done: mpsc::Sender<Result<DocWritten, ChangeError>>,
    ) -> Result<(), String> {
        let Some(leader) = node.leader() else {
            return Err("this node no longer leads: reconnect to the leader".into());
        };
        let update = crdt::merge_updates(&self.pending)
            .map_err(|e| format!("cannot merge the document's updates: {e}"))?;
        self.pending.clear();
        let txn = self.awareness.doc().transact();
        let text = self.text.get_string(&txn);
        self.since_compaction += update.len();
        let compacted = (!update.is_empty()
            && self.since_compaction > COMPACT_MIN_BYTES.max(self.state_bytes))
        .then(|| txn.encode_state_as_update_v1(&StateVector::default()));
        // A compaction keeps the newest update (see `StoredDoc`). The merged keystrokes of a
        // commit that waited long carry every character typed, deleted ones too; the same
        // edits read from the document, whose deleted text is collected, may be far smaller.
        let update = match &compacted {
            Some(_) => smaller_equivalent(&txn, update),
            None => update,
        };
        drop(txn);
        if let Some(state) = &compacted {
            self.state_bytes = state.len();
            self.since_compaction = 0;
        }
        self.in_flight = true;
        self.last_commit = Instant::now();
        let (written_tx, written_rx) = oneshot::channel();
        let change = CollabChange::Write {
            doc: Box::new(self.doc.clone()),
            write: DocWrite {
                update,
                text,
                compacted,
                base_seq: self.seen_seq,
            },
            written: written_tx,
        };
        tokio::spawn(async move {
            let (reply, answer) = oneshot::channel();
            let stopping = || ChangeError::Unavailable("the leader is stopping".into());
            let result = match leader.writer.send(WriteJob::Collab { change, reply }).await {
                Err(_) => Err(stopping()),
                Ok(()) => match answer.await {
                    Err(_) => Err(stopping()),
                    Ok(Err(e)) => Err(e),
                    Ok(Ok(_)) => written_rx.await.map_err(|_| stopping()),
                },
            };
            let _ = done.send(result).await;
        });
        Ok(())
    }
}
