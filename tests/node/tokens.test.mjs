// Access-token compatibility between Relais and the real Node `livekit-server-sdk`.
//
// - Tokens minted by the SDK's AccessToken verify in Relais (`relais verify-token`),
//   every claim decoded exactly.
// - Tokens minted by `relais create-token` pass the SDK's TokenVerifier.
// - Bad tokens are rejected with a non-zero exit and a clear message.
//
// The binary is $RELAIS_BIN, default target/debug/relais under the repo root.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import * as jose from 'jose';
import {
  AccessToken,
  RoomAgentDispatch,
  RoomConfiguration,
  TokenVerifier,
  TrackSource,
} from 'livekit-server-sdk';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const RELAIS = process.env.RELAIS_BIN || resolve(ROOT, 'target', 'debug', 'relais');
const API_KEY = 'APInodeKey0001';
const API_SECRET = 'nodeSecret0123456789abcdefghijklmnopqrstuv';
const KEYS = `${API_KEY}: ${API_SECRET}`;

function cleanEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('LIVEKIT_') || k.startsWith('REDIS_')) continue;
    if (['NODE_IP', 'UDP_PORT', 'RUST_LOG'].includes(k)) continue;
    env[k] = v;
  }
  env.NO_COLOR = '1';
  return env;
}

function relais(...args) {
  assert.ok(existsSync(RELAIS), `relais binary not found at ${RELAIS}: build it first (cargo build)`);
  return spawnSync(RELAIS, args, { encoding: 'utf8', env: cleanEnv(), timeout: 60_000 });
}

function verifyInRelais(token) {
  const p = relais('--keys', KEYS, 'verify-token', token);
  assert.equal(p.status, 0, `verify-token failed: ${p.stderr}`);
  return JSON.parse(p.stdout);
}

function expectRejected(token, ...needles) {
  const p = relais('--keys', KEYS, 'verify-token', token);
  assert.notEqual(p.status, 0, `accepted a bad token: ${p.stdout}`);
  assert.ok(p.stderr.startsWith('error:'), p.stderr);
  for (const n of needles) assert.ok(p.stderr.includes(n), `${n} not in ${p.stderr}`);
  assert.ok(!p.stderr.includes(API_SECRET));
}

const secretBytes = new TextEncoder().encode(API_SECRET);
const now = () => Math.floor(Date.now() / 1000);

async function handMade(payload, alg = 'HS256') {
  return new jose.SignJWT(payload).setProtectedHeader({ alg }).sign(secretBytes);
}

test('Node-minted token with every grant verifies in Relais, decoded exactly', async () => {
  const at = new AccessToken(API_KEY, API_SECRET, {
    identity: 'node-identity',
    name: 'Node Name ✓',
    metadata: '{"role":"viewer"}',
    attributes: { seat: '12', lang: 'de' },
    ttl: '10m',
  });
  at.kind = 'agent';
  at.sha256 = 'q83vEjRWeJA=';
  at.roomPreset = 'node-preset';
  at.roomConfig = new RoomConfiguration({
    name: 'node-room',
    emptyTimeout: 12,
    departureTimeout: 3,
    maxParticipants: 9,
    metadata: 'rm',
    minPlayoutDelay: 50,
    maxPlayoutDelay: 500,
    syncStreams: true,
    agents: [new RoomAgentDispatch({ agentName: 'helper', metadata: 'jm' })],
  });
  at.addGrant({
    roomCreate: true,
    roomJoin: true,
    roomList: true,
    roomRecord: true,
    roomAdmin: true,
    room: 'node-room',
    ingressAdmin: true,
    canPublish: false,
    canPublishSources: [TrackSource.CAMERA, TrackSource.SCREEN_SHARE_AUDIO],
    canSubscribe: false,
    canPublishData: true,
    canUpdateOwnMetadata: true,
    hidden: true,
    recorder: true,
    agent: true,
    canSubscribeMetrics: true,
    canManageAgentSession: true,
    destinationRoom: 'node-dest',
  });
  at.addSIPGrant({ admin: true, call: true });
  at.addInferenceGrant({ perform: true });
  at.addObservabilityGrant({ write: true });
  const token = await at.toJwt();
  const payload = jose.decodeJwt(token);

  const out = verifyInRelais(token);
  assert.deepEqual(out.claims, payload);
  assert.equal(out.identity, 'node-identity');
  assert.equal(out.apiKey, API_KEY);
  const c = out.claims;
  assert.equal(c.name, 'Node Name ✓');
  assert.equal(c.metadata, '{"role":"viewer"}');
  assert.deepEqual(c.attributes, { seat: '12', lang: 'de' });
  assert.equal(c.kind, 'agent');
  assert.equal(c.sha256, 'q83vEjRWeJA=');
  assert.equal(c.roomPreset, 'node-preset');
  assert.deepEqual(c.video, {
    roomCreate: true,
    roomJoin: true,
    roomList: true,
    roomRecord: true,
    roomAdmin: true,
    room: 'node-room',
    ingressAdmin: true,
    canPublish: false,
    canPublishSources: ['camera', 'screen_share_audio'],
    canSubscribe: false,
    canPublishData: true,
    canUpdateOwnMetadata: true,
    hidden: true,
    recorder: true,
    agent: true,
    canSubscribeMetrics: true,
    canManageAgentSession: true,
    destinationRoom: 'node-dest',
  });
  assert.deepEqual(c.sip, { admin: true, call: true });
  assert.deepEqual(c.inference, { perform: true });
  assert.deepEqual(c.observability, { write: true });
  assert.equal(c.roomConfig.name, 'node-room');
  assert.equal(c.roomConfig.emptyTimeout, 12);
  assert.equal(c.roomConfig.maxParticipants, 9);
  // protobuf-es writes every member of RoomAgentDispatch (restartPolicy, ...).
  assert.equal(c.roomConfig.agents.length, 1);
  assert.equal(c.roomConfig.agents[0].agentName, 'helper');
  assert.equal(c.roomConfig.agents[0].metadata, 'jm');
  assert.equal(out.permissions.canPublish, false);
  assert.equal(out.permissions.canSubscribe, false);
  assert.equal(out.permissions.canPublishData, true);
  assert.equal(out.permissions.canUpdateOwnMetadata, true);
});

test('Node token defaults: absent canPublish/canSubscribe mean allowed', async () => {
  const at = new AccessToken(API_KEY, API_SECRET, { identity: 'plain' });
  at.addGrant({ roomJoin: true, room: 'r' });
  const token = await at.toJwt();
  const out = verifyInRelais(token);
  assert.deepEqual(out.claims, jose.decodeJwt(token));
  assert.deepEqual(out.claims.video, { roomJoin: true, room: 'r' });
  assert.equal(out.permissions.canPublish, true);
  assert.equal(out.permissions.canSubscribe, true);
  assert.equal(out.permissions.canPublishData, true);
  assert.equal(out.permissions.canUpdateOwnMetadata, false);
});

test('Node token without identity has no sub', async () => {
  const at = new AccessToken(API_KEY, API_SECRET);
  at.addGrant({ roomList: true });
  const out = verifyInRelais(await at.toJwt());
  assert.equal(out.identity, '');
  assert.ok(!('sub' in out.claims));
});

test('Relais-minted token passes the Node TokenVerifier', async () => {
  const p = relais(
    '--keys', KEYS,
    'create-token',
    '--room', 'rl-room',
    '--identity', 'rl-node',
    '--name', 'From Relais',
    '--metadata', 'md',
    '--attribute', 'a=1',
    '--grants', 'join,publish,subscribe,admin,hidden,update-metadata',
    '--sources', 'microphone',
    '--valid-for', '30m',
  );
  assert.equal(p.status, 0, p.stderr);
  const token = p.stdout.trim();
  const claims = await new TokenVerifier(API_KEY, API_SECRET).verify(token);
  assert.equal(claims.sub, 'rl-node');
  assert.equal(claims.iss, API_KEY);
  assert.equal(claims.name, 'From Relais');
  assert.equal(claims.metadata, 'md');
  assert.deepEqual(claims.attributes, { a: '1' });
  assert.deepEqual(claims.video, {
    roomJoin: true,
    roomAdmin: true,
    room: 'rl-room',
    canPublish: true,
    canSubscribe: true,
    canPublishData: true,
    canPublishSources: ['microphone'],
    canUpdateOwnMetadata: true,
    hidden: true,
  });
  assert.ok(Math.abs(claims.exp - claims.nbf - 1800) <= 5);
  await assert.rejects(new TokenVerifier(API_KEY, 'wrong-secret').verify(token));
});

test('bad tokens are rejected with a clear message', async () => {
  const base = () => ({ iss: API_KEY, sub: 'x', nbf: now() - 5, exp: now() + 600 });
  expectRejected(await handMade({ ...base(), exp: now() - 300 }), 'expired');
  const { exp: _omit, ...noExp } = base();
  expectRejected(await handMade(noExp), 'exp');
  expectRejected(await handMade({ ...base(), nbf: now() + 600 }), 'not valid yet');
  expectRejected(await handMade(base(), 'HS384'), 'HS384', 'HS256');
  expectRejected(new jose.UnsecuredJWT(base()).encode(), 'none');
  expectRejected(await handMade({ ...base(), iss: 'APIunknown' }), 'invalid API key');
  expectRejected(
    await new jose.SignJWT(base()).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode('other')),
    'signature',
  );
  expectRejected(await handMade({ ...base(), video: { roomJoin: true, canPublishh: true } }), 'unknown grant field', 'canPublishh');
});
