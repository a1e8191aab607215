// Starts a `relais` for a Node test on free loopback ports and stops it afterwards.
//
// The binary is $RELAIS_BIN, default target/debug/relais under the repo root.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const RELAIS = process.env.RELAIS_BIN || resolve(ROOT, 'target', 'debug', 'relais');
export const API_KEY = 'devkey';
export const API_SECRET = 'secret';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort(open) {
  return new Promise((ok, fail) => {
    const s = open();
    s.once('error', fail);
    const done = () => {
      const { port } = s.address();
      s.close(() => ok(port));
    };
    if (s.listen) s.listen(0, '127.0.0.1', done);
    else s.bind(0, '127.0.0.1', done);
  });
}

/**
 * Start relais with the dev key pair and `extraYaml` (lines appended to its config file).
 * Resolves once `GET /` answers; `stop()` ends it and fails the test if it panicked.
 */
export async function startRelais(extraYaml = []) {
  assert.ok(existsSync(RELAIS), `relais binary not found at ${RELAIS}: build it first`);
  const dir = mkdtempSync(join(tmpdir(), 'relais-node-'));
  const port = await freePort(() => createServer());
  const udp = await freePort(() => createSocket('udp4'));
  const tcp = await freePort(() => createServer());
  const config = [
    `port: ${port}`,
    'bind_addresses: ["127.0.0.1"]',
    'rtc:',
    `  udp_port: ${udp}`,
    `  tcp_port: ${tcp}`,
    '  node_ip: "127.0.0.1"',
    'keys:',
    `  ${API_KEY}: ${API_SECRET}`,
    'logging:',
    '  level: info',
    ...extraYaml,
  ].join('\n');
  const configPath = join(dir, 'relais.yaml');
  writeFileSync(configPath, config + '\n');
  const logPath = join(dir, 'relais.log');
  const env = { ...process.env, NO_COLOR: '1' };
  for (const k of Object.keys(env)) {
    if (k.startsWith('LIVEKIT_')) delete env[k];
  }
  const proc = spawn(RELAIS, ['--config', configPath], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const chunks = [];
  proc.stdout.on('data', (d) => chunks.push(d));
  proc.stderr.on('data', (d) => chunks.push(d));
  proc.on('exit', () => writeFileSync(logPath, Buffer.concat(chunks)));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      const r = await fetch(url + '/');
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    assert.ok(proc.exitCode === null, 'relais exited during start-up');
    assert.ok(Date.now() < deadline, 'relais did not answer GET / within 20 s');
    await sleep(100);
  }

  async function stop() {
    if (proc.exitCode === null) {
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await Promise.race([exited, sleep(5000)]);
      if (proc.exitCode === null) proc.kill('SIGKILL');
    }
    if (existsSync(logPath)) {
      assert.ok(!readFileSync(logPath, 'utf8').includes('panicked'), 'relais panicked');
    }
    rmSync(dir, { recursive: true, force: true });
  }

  return { url, port, stop };
}
