#!/usr/bin/env node
/**
 * Makes sure the Debian test data the tests need is installed (runs as `pretest`):
 *   libonnx-testdata       /usr/share/libonnx-testdata/data   (ONNX backend conformance cases)
 *   dataset-fashion-mnist  /usr/share/datasets/fashion-mnist  (training / calibration data)
 *   imagemagick, fonts-dejavu-core, espeak-ng, sox  (rendered text and speech for the real-model tests)
 * Already installed: returns at once. Missing and running as root: installs them with apt-get. Missing and not
 * root: says what to install and exits 0 (the tests that need the data then fail saying so).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

const NEEDED = [
  { pkg: 'libonnx-testdata', path: '/usr/share/libonnx-testdata/data/node' },
  { pkg: 'dataset-fashion-mnist', path: '/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz' },
  // Real inputs for the real-model tests: rendered text (ImageMagick + DejaVu) and speech (espeak-ng + sox).
  { pkg: 'imagemagick', path: '/usr/bin/convert-im6.q16' },
  { pkg: 'fonts-dejavu-core', path: '/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf' },
  { pkg: 'espeak-ng', path: '/usr/bin/espeak-ng' },
  { pkg: 'sox', path: '/usr/bin/sox' },
];
// `--bench`: also PyTorch 1.13 and ONNX from Debian, the peer the side-by-side benchmarks run (bench/ptq-fashion,
// bench/train; always through /usr/bin/python3).
if (process.argv.includes('--bench')) {
  NEEDED.push(
    { pkg: 'python3-torch', path: '/usr/lib/python3/dist-packages/torch/__init__.py' },
    { pkg: 'python3-onnx', path: '/usr/lib/python3/dist-packages/onnx/__init__.py' },
  );
}

const missing = NEEDED.filter((n) => !existsSync(n.path));
if (missing.length === 0) process.exit(0);

const pkgs = missing.map((n) => n.pkg);
const log = (s) => console.error(`setup-test-data: ${s}`);
log(`missing test data: ${missing.map((n) => `${n.pkg} (${n.path})`).join(', ')}`);

const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
const hasApt = spawnSync('apt-get', ['--version'], { stdio: 'ignore' }).status === 0;
if (!isRoot || !hasApt) {
  log(
    `${isRoot ? 'apt-get is not available' : 'not running as root'}; install the data with:\n` +
      `    sudo apt-get update && sudo apt-get install -y ${pkgs.join(' ')}\n` +
      'or run `npm test` as root. The tests that need this data will fail until it is installed.',
  );
  process.exit(0);
}

function run(args, env = {}) {
  log(
    `running: ${Object.entries(env)
      .map(([k, v]) => `${k}=${v} `)
      .join('')}apt-get ${args.join(' ')}`,
  );
  const r = spawnSync('apt-get', args, { stdio: 'inherit', env: { ...process.env, ...env } });
  if (r.status !== 0) {
    log(
      `apt-get ${args[0]} failed (exit ${r.status ?? r.signal}); the tests that need ${pkgs.join(', ')} will fail`,
    );
    process.exit(0);
  }
}

run(['update']);
run(['install', '-y', ...pkgs], { DEBIAN_FRONTEND: 'noninteractive' });
const still = NEEDED.filter((n) => !existsSync(n.path));
if (still.length) log(`still missing after install: ${still.map((n) => n.path).join(', ')}`);
else log(`installed ${pkgs.join(', ')}`);
