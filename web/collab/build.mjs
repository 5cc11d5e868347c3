// Builds the editor page with esbuild into the node's assets (crates/flotilla-node/assets/edit),
// which the Rust build embeds: run `npm run build` after changing anything under src/, and
// commit the output.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
// esbuild does not check types: TypeScript does, first (a type error stops the build).
execFileSync(process.execPath, [join(here, 'node_modules/typescript/bin/tsc'), '--noEmit', '-p', here], { stdio: 'inherit' });
// `--out DIR` builds elsewhere (the browser test builds into a temporary directory and
// compares: the committed assets must be what the sources build to).
const at = process.argv.indexOf('--out');
const out = at > 0 ? process.argv[at + 1] : join(here, '../../crates/flotilla-node/assets/edit');
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, 'src/editor.ts')],
  outfile: join(out, 'app.js'),
  bundle: true,
  format: 'esm',
  target: 'es2022',
  minify: true,
  legalComments: 'linked',
  logLevel: at > 0 ? 'warning' : 'info',
});
copyFileSync(join(here, 'src/index.html'), join(out, 'index.html'));
