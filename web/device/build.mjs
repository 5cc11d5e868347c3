// Builds the calendar page and its device worker with esbuild into the node's assets
// (crates/flotilla-node/assets/calendar), which the Rust build embeds: run `npm run build`
// after changing anything under src/ or calendar/, and commit the output.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
// esbuild does not check types: TypeScript does, first (a type error stops the build).
execFileSync(process.execPath, [join(here, 'node_modules/typescript/bin/tsc'), '--noEmit', '-p', here], { stdio: 'inherit' });
// `--out DIR` builds elsewhere (the browser test builds into a temporary directory and
// compares: the committed assets must be what the sources build to).
const at = process.argv.indexOf('--out');
const out = at > 0 ? process.argv[at + 1] : join(here, '../../crates/flotilla-node/assets/calendar');
mkdirSync(out, { recursive: true });
const common = { bundle: true, format: 'esm', target: 'es2022', minify: true, legalComments: 'linked', logLevel: at > 0 ? 'warning' : 'info' };
await build({ ...common, entryPoints: [join(here, 'calendar/app.ts')], outfile: join(out, 'app.js') });
await build({ ...common, entryPoints: [join(here, 'src/worker.ts')], outfile: join(out, 'device-worker.js') });
copyFileSync(join(here, 'calendar/index.html'), join(out, 'index.html'));
copyFileSync(join(here, 'node_modules/@sqlite.org/sqlite-wasm/dist/sqlite3.wasm'), join(out, 'sqlite3.wasm'));
// The service worker's cache is named by a digest of the files it keeps: a new build, a new
// cache.
const digest = createHash('sha256');
for (const f of ['index.html', 'app.js', 'device-worker.js', 'sqlite3.wasm']) digest.update(readFileSync(join(out, f)));
await build({
  ...common,
  entryPoints: [join(here, 'calendar/sw.ts')],
  outfile: join(out, 'sw.js'),
  define: { VERSION: JSON.stringify(digest.digest('hex').slice(0, 16)) },
});
