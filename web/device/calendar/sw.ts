// The calendar's service worker: keeps the page's files so the page opens with no network
// (on a plane, or with the server down); its data is in the browser's own database already.
// Cache-first under a name that changes with every build (build.mjs puts the files' digest in
// VERSION), so a new binary's page replaces the old one the next time the browser checks.
// Requests to the API (/v1/…) are never kept: they go to the network.

declare const VERSION: string;
const sw = self as unknown as ServiceWorkerGlobalScope;
const CACHE = `flotilla-calendar-${VERSION}`;
const FILES = ['./', './app.js', './device-worker.js', './sqlite3.wasm'];

sw.addEventListener('install', (ev) => {
  ev.waitUntil(
    caches
      .open(CACHE)
      .then((c) => c.addAll(FILES))
      .then(() => sw.skipWaiting()),
  );
});

sw.addEventListener('activate', (ev) => {
  ev.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((n) => n.startsWith('flotilla-calendar-') && n !== CACHE).map((n) => caches.delete(n))))
      .then(() => sw.clients.claim()),
  );
});

sw.addEventListener('fetch', (ev) => {
  const url = new URL(ev.request.url);
  if (ev.request.method !== 'GET' || url.origin !== location.origin || !url.pathname.startsWith('/calendar/')) return;
  // index.html is kept under ./ (the page's address).
  const key = url.pathname.endsWith('/index.html') ? new URL('./', url).href : url.href.split('#')[0].split('?')[0];
  ev.respondWith(caches.match(key, { cacheName: CACHE }).then((hit) => hit ?? fetch(ev.request)));
});
