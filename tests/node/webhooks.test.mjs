// Webhooks judged by the real Node `livekit-server-sdk` WebhookReceiver.
//
// A node:http receiver verifies every delivery with
// `new WebhookReceiver(key, secret).receive(body, authorization)` (JWT signature and the
// `sha256` claim against the exact body), then the tests check the ordered events of a
// room's life:
//   - RoomService createRoom → room_started;
//   - a client that opens /rtc, gets its join response and goes away without ever
//     connecting media → participant_connection_aborted;
//   - RoomService deleteRoom → room_finished;
//   - a room auto-created by a join closes after departure_timeout → room_finished.
// A tampered body is refused by the same receiver (the check can fail).
//
// The binary is $RELAIS_BIN, default target/debug/relais under the repo root.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import http from 'node:http';

import { AccessToken, RoomServiceClient, WebhookReceiver } from 'livekit-server-sdk';

import { API_KEY, API_SECRET, startRelais } from './relais_process.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(cond, what, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = cond();
    if (v) return v;
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await sleep(50);
  }
}

// ------------------------------------------------------------------ the receiver

const receiver = new WebhookReceiver(API_KEY, API_SECRET);
/** Every delivery: { event, error, headers, body, at } in arrival order. */
const deliveries = [];
let sink;
let sinkUrl;

function startSink() {
  sink = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const d = { event: null, error: null, headers: req.headers, body, at: Date.now() };
      try {
        d.event = await receiver.receive(body, req.headers.authorization);
      } catch (e) {
        d.error = String(e);
      }
      deliveries.push(d);
      res.writeHead(200);
      res.end();
    });
  });
  return new Promise((ok) =>
    sink.listen(0, '127.0.0.1', () => {
      sinkUrl = `http://127.0.0.1:${sink.address().port}/hook`;
      ok();
    }),
  );
}

const eventsOf = (room) => deliveries.filter((d) => d.event?.room?.name === room).map((d) => d.event);
const namesOf = (room) => eventsOf(room).map((e) => e.event);

// ------------------------------------------------------------------ relais

let relais;
let url;
let wsUrl;

before(async () => {
  await startSink();
  relais = await startRelais([
    'room:',
    '  empty_timeout: 1',
    '  departure_timeout: 1',
    'webhook:',
    `  api_key: ${API_KEY}`,
    '  urls:',
    `    - "${sinkUrl}"`,
  ]);
  url = relais.url;
  wsUrl = `127.0.0.1:${relais.port}`;
});

after(async () => {
  if (relais) await relais.stop();
  if (sink) await new Promise((r) => sink.close(r));
});

const unique = (p) => `${p}-${Math.random().toString(36).slice(2, 10)}`;

/**
 * Joins `room` over /rtc as `identity` with a bare WebSocket handshake (Node 20 has no
 * WebSocket client), waits for the first frame (the join response), then drops the
 * connection: a participant that never connects media.
 */
async function ghostJoin(room, identity) {
  const at = new AccessToken(API_KEY, API_SECRET, { identity });
  at.addGrant({ roomJoin: true, room });
  const token = await at.toJwt();
  const [host, port] = wsUrl.split(':');
  await new Promise((ok, fail) => {
    const req = http.request({
      host,
      port,
      path: `/rtc?access_token=${token}&protocol=15&auto_subscribe=1`,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': randomBytes(16).toString('base64'),
      },
    });
    const timer = setTimeout(() => fail(new Error('no join response within 10 s')), 10_000);
    req.on('upgrade', (_res, socket, head) => {
      const done = () => {
        clearTimeout(timer);
        socket.destroy();
        ok();
      };
      if (head && head.length > 0) done();
      else socket.once('data', done);
    });
    req.on('response', (res) => {
      clearTimeout(timer);
      fail(new Error(`no upgrade: HTTP ${res.statusCode}`));
    });
    req.on('error', fail);
    req.end();
  });
}

function checkDeliveries(room) {
  const mine = deliveries.filter((d) => d.body.includes(room));
  assert.ok(mine.length > 0);
  for (const d of mine) {
    assert.equal(d.error, null, `WebhookReceiver refused a delivery: ${d.error}`);
    assert.equal(d.headers['content-type'], 'application/webhook+json');
    assert.equal(d.headers['user-agent'], 'LiveKit');
    assert.ok(!/^bearer/i.test(d.headers.authorization), 'Authorization must be the raw JWT');
  }
  const events = eventsOf(room);
  const ids = events.map((e) => e.id);
  assert.equal(new Set(ids).size, ids.length, `duplicate ids: ${ids}`);
  for (const e of events) {
    assert.match(e.id, /^EV_/);
    const created = Number(e.createdAt);
    const now = Date.now() / 1000;
    assert.ok(created > now - 120 && created <= now + 2, `createdAt ${created}`);
  }
  const sids = new Set(events.map((e) => e.room.sid));
  assert.equal(sids.size, 1, `one room sid: ${[...sids]}`);
  assert.match([...sids][0], /^RM_/);
  return events;
}

// ------------------------------------------------------------------ tests

test('room API and an aborted connection: ordered, verified events', async () => {
  const svc = new RoomServiceClient(url, API_KEY, API_SECRET);
  const name = unique('hook');
  await svc.createRoom({ name, emptyTimeout: 300 });
  await waitFor(() => namesOf(name).includes('room_started'), 'room_started');

  await ghostJoin(name, 'ghost');
  await waitFor(
    () => namesOf(name).includes('participant_connection_aborted'),
    'participant_connection_aborted',
  );

  await svc.deleteRoom(name);
  await waitFor(() => namesOf(name).includes('room_finished'), 'room_finished');
  await sleep(300);
  assert.deepEqual(namesOf(name), ['room_started', 'participant_connection_aborted', 'room_finished']);

  const [started, aborted] = checkDeliveries(name);
  assert.equal(started.room.emptyTimeout, 300);
  assert.equal(aborted.participant.identity, 'ghost');
  assert.match(aborted.participant.sid, /^PA_/);
});

test('an auto-created room finishes after its departure timeout', async () => {
  const name = unique('auto');
  await ghostJoin(name, 'visitor');
  await waitFor(() => namesOf(name).includes('room_finished'), 'room_finished', 20_000);
  await sleep(300);
  assert.deepEqual(namesOf(name), ['room_started', 'participant_connection_aborted', 'room_finished']);
  checkDeliveries(name);
});

test('a tampered body is refused by the receiver', async () => {
  const d = await waitFor(() => deliveries.find((x) => x.event), 'a delivery');
  await assert.rejects(receiver.receive(d.body.replace('"event"', ' "event"'), d.headers.authorization));
  await assert.rejects(new WebhookReceiver(API_KEY, 'wrong-secret').receive(d.body, d.headers.authorization));
  assert.ok(await receiver.receive(d.body, d.headers.authorization));
});
