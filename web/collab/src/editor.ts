// The collaborative editor page (`/edit/TABLE/KEY/COLUMN`): CodeMirror 6 bound to the
// document's Y.Text "text" through y-codemirror.next, synced by a stock y-websocket provider
// with the node's /v1/collab endpoint. Other people's cursors and selections come through
// awareness. With authentication on, the token is given as `?token=` (kept for this tab only).
import * as Y from 'yjs';
import { WebsocketProvider } from 'y-websocket';
import { yCollab } from 'y-codemirror.next';
import { EditorView, basicSetup } from 'codemirror';
import { Compartment, EditorState } from '@codemirror/state';
import * as decoding from 'lib0/decoding';

const COLOURS = ['#30bced', '#6eeb83', '#ffbc42', '#ecd444', '#ee6352', '#9ac2c9', '#8acb88', '#1be7ff'];

function byId<T extends HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page lacks #${id}`);
  return el as T;
}

/** TABLE/KEY/COLUMN from the page's path (each part URL-decoded once, then encoded again). */
function documentAddress(): string | null {
  const parts = location.pathname.replace(/^\/edit\//, '').split('/').filter((p) => p !== '');
  if (parts.length !== 3) return null;
  return parts.map((p) => encodeURIComponent(decodeURIComponent(p))).join('/');
}

function tokenFromPage(): string | null {
  const given = new URLSearchParams(location.search).get('token');
  if (given) {
    sessionStorage.setItem('flotilla-token', given);
    // Out of the address bar (and of links copied from it).
    const url = new URL(location.href);
    url.searchParams.delete('token');
    history.replaceState(null, '', url);
    return given;
  }
  return sessionStorage.getItem('flotilla-token');
}

function start(address: string, token: string | null) {
  const status = byId<HTMLSpanElement>('status');
  const people = byId<HTMLSpanElement>('people');
  const tokenForm = byId<HTMLFormElement>('token-form');
  const doc = new Y.Doc();
  const text = doc.getText('text');
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const params: Record<string, string> = token ? { token } : {};
  const provider = new WebsocketProvider(`${scheme}://${location.host}/v1/collab`, address, doc, { params });
  const name = new URLSearchParams(location.search).get('name') ?? `Guest ${Math.floor(Math.random() * 1000)}`;
  const colour = COLOURS[doc.clientID % COLOURS.length];
  provider.awareness.setLocalStateField('user', { name, color: colour, colorLight: `${colour}33` });

  let failures = 0;
  let synced = false;
  let readOnly: string | null = null;
  const showStatus = () => {
    const online = navigator.onLine;
    const state = !online ? 'offline' : provider.wsconnected ? 'connected' : 'connecting';
    status.dataset.state = state;
    if (readOnly !== null) status.dataset.readonly = '';
    status.textContent =
      state === 'connected' && readOnly !== null ? `connected · read-only: ${readOnly}`
      : state === 'connected' ? (synced ? 'connected · saved on the server as you type' : 'connected · syncing…')
      : state === 'offline' ? 'offline · your edits are kept and sent when the network is back'
      : failures > 2 ? 'cannot connect: retrying (a token may be needed, or the row may not exist)'
      : 'connecting…';
    if (failures > 2 && !token) tokenForm.dataset.shown = '';
  };
  provider.on('status', (e: { status: string }) => {
    if (e.status === 'connected') failures = 0;
    showStatus();
  });
  provider.on('sync', (s: boolean) => { synced = s; showStatus(); });
  provider.on('connection-close', () => { failures += 1; synced = false; showStatus(); });
  // Offline, the page stops trying to reach the server (edits stay in the document); back
  // online, it reconnects at once and the sync sends what was typed meanwhile.
  addEventListener('offline', () => { provider.disconnect(); showStatus(); });
  addEventListener('online', () => { provider.connect(); showStatus(); });
  const showPeople = () => {
    people.replaceChildren();
    for (const [id, st] of provider.awareness.getStates()) {
      const user = (st as { user?: { name?: unknown; color?: unknown } }).user;
      if (!user || typeof user.name !== 'string') continue;
      const chip = document.createElement('span');
      chip.textContent = id === doc.clientID ? `${user.name} (you)` : user.name;
      chip.style.background = typeof user.color === 'string' && /^#[0-9a-f]{6}$/i.test(user.color) ? user.color : '#888';
      people.append(chip);
    }
  };
  provider.awareness.on('change', showPeople);
  showPeople();

  const undoManager = new Y.UndoManager(text);
  const editable = new Compartment();
  const view = new EditorView({
    parent: byId('editor'),
    state: EditorState.create({
      doc: text.toString(),
      extensions: [
        basicSetup,
        EditorView.lineWrapping,
        editable.of(EditorView.editable.of(true)),
        yCollab(text, provider.awareness, { undoManager }),
      ],
    }),
  });
  // The server says when this page may not edit (a read-only token, or another person's
  // lock) and when it may again (the lock went): the editor follows and says why.
  provider.messageHandlers[2] = (_encoder, decoder) => {
    const denied = decoding.readVarUint(decoder) === 0;
    readOnly = denied ? decoding.readVarString(decoder) : null;
    view.dispatch({ effects: editable.reconfigure(EditorView.editable.of(!denied)) });
    if (!denied) delete status.dataset.readonly;
    showStatus();
  };

  // Lock-based mode: take the document's lock (only this page edits while it holds it),
  // renewed while held, released on the button or when the page closes.
  const lockButton = byId<HTMLButtonElement>('lock');
  let lock: { id: string; renew: number } | null = null;
  const lockUrl = `/v1/collab/${address}/lock`;
  const headers = (): Record<string, string> => ({
    'content-type': 'application/json',
    ...(token ? { authorization: `Bearer ${token}` } : {}),
  });
  const reconnect = () => { provider.disconnect(); provider.connect(); };
  lockButton.addEventListener('click', async () => {
    if (lock) {
      clearInterval(lock.renew);
      await fetch(`${lockUrl}?lock=${lock.id}`, { method: 'DELETE', headers: headers() });
      lock = null;
      delete provider.params.lock;
      lockButton.textContent = 'Lock';
      reconnect();
      return;
    }
    const resp = await fetch(lockUrl, { method: 'POST', headers: headers(), body: JSON.stringify({ holder: name, seconds: 30 }) });
    const body = await resp.json();
    if (!resp.ok) {
      byId('error').textContent = body?.error?.message ?? `locking failed (${resp.status})`;
      return;
    }
    byId('error').textContent = '';
    const id: string = body.lock;
    const renew = window.setInterval(() => {
      fetch(lockUrl, { method: 'POST', headers: headers(), body: JSON.stringify({ holder: name, seconds: 30, lock: id }) });
    }, 10_000);
    lock = { id, renew };
    provider.params.lock = id;
    lockButton.textContent = 'Unlock';
    reconnect();
  });
  addEventListener('pagehide', () => {
    if (lock) fetch(`${lockUrl}?lock=${lock.id}`, { method: 'DELETE', headers: headers(), keepalive: true });
  });
  // For tests and the curious: the page's document, its text, provider and view.
  (window as unknown as { flotillaEditor: unknown }).flotillaEditor = { doc, text, provider, view, Y };
}

const address = documentAddress();
if (address === null) {
  byId('error').textContent = 'This page edits a document at /edit/TABLE/KEY/COLUMN (for example /edit/notes/42/body).';
} else {
  byId('title').textContent = decodeURIComponent(address);
  document.title = `Flotilla · ${decodeURIComponent(address)}`;
  const form = byId<HTMLFormElement>('token-form');
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const t = byId<HTMLInputElement>('token').value.trim();
    if (t) {
      sessionStorage.setItem('flotilla-token', t);
      location.reload();
    }
  });
  start(address, tokenFromPage());
}
