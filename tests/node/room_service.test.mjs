// RoomService through the real Node `livekit-server-sdk` RoomServiceClient (JSON Twirp):
// every method against a running relais, checking the replies and the Twirp errors
// (code, HTTP status, message) the SDK surfaces. The effects on connected clients are
// covered by tests/python/test_room_service.py.
//
// The binary is $RELAIS_BIN, default target/debug/relais under the repo root.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { AccessToken, DataPacket_Kind, RoomServiceClient } from 'livekit-server-sdk';

import { API_KEY, API_SECRET, startRelais } from './relais_process.mjs';

let relais;
let url;

before(async () => {
  relais = await startRelais();
  url = relais.url;
});

after(async () => {
  if (relais) await relais.stop();
});

function client() {
  return new RoomServiceClient(url, API_KEY, API_SECRET);
}

async function rejects(promise, code, status, msgPart) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.code, code, `code: ${err.code} (${err.message})`);
    assert.equal(err.status, status, `status for ${code}`);
    if (msgPart) assert.ok(err.message.includes(msgPart), err.message);
    return true;
  });
}

const unique = (p) => `${p}-${Math.random().toString(36).slice(2, 10)}`;

test('CreateRoom, ListRooms, UpdateRoomMetadata, DeleteRoom', async () => {
  const svc = client();
  const name = unique('node');
  const room = await svc.createRoom({
    name,
    emptyTimeout: 120,
    departureTimeout: 15,
    maxParticipants: 5,
    metadata: 'from node',
  });
  assert.equal(room.name, name);
  assert.match(room.sid, /^RM_/);
  assert.equal(room.emptyTimeout, 120);
  assert.equal(room.departureTimeout, 15);
  assert.equal(room.maxParticipants, 5);
  assert.equal(room.metadata, 'from node');
  assert.ok(room.creationTime > 0n);

  const again = await svc.createRoom({ name, metadata: 'ignored' });
  assert.equal(again.sid, room.sid);
  assert.equal(again.metadata, 'from node');

  const listed = await svc.listRooms([name]);
  assert.deepEqual(listed.map((r) => r.sid), [room.sid]);
  const all = await svc.listRooms();
  assert.ok(all.some((r) => r.sid === room.sid));
  assert.deepEqual(await svc.listRooms([unique('missing')]), []);

  const updated = await svc.updateRoomMetadata(name, 'new metadata');
  assert.equal(updated.metadata, 'new metadata');
  assert.equal(updated.sid, room.sid);

  assert.deepEqual(await svc.listParticipants(name), []);

  await svc.deleteRoom(name);
  assert.deepEqual(await svc.listRooms([name]), []);
  await rejects(svc.deleteRoom(name), 'not_found', 404, 'requested room does not exist');
  await rejects(svc.updateRoomMetadata(name, 'x'), 'not_found', 404);
  await rejects(svc.listParticipants(name), 'not_found', 404);
});

test('participant methods on an empty room answer not_found', async () => {
  const svc = client();
  const name = unique('node');
  await svc.createRoom({ name });
  await rejects(svc.getParticipant(name, 'nobody'), 'not_found', 404, 'participant does not exist');
  await rejects(svc.removeParticipant(name, 'nobody'), 'not_found', 404);
  await rejects(svc.updateParticipant(name, 'nobody', { metadata: 'm', name: 'n', attributes: { a: 'b' } }), 'not_found', 404);
  await rejects(
    svc.updateParticipant(name, 'nobody', 'meta', { canPublish: false, canSubscribe: true }),
    'not_found',
    404,
  );
  await rejects(svc.mutePublishedTrack(name, 'nobody', 'TR_x', true), 'not_found', 404);
  await rejects(svc.mutePublishedTrack(name, 'nobody', 'TR_x', false), 'failed_precondition', 412);
  await rejects(svc.updateSubscriptions(name, 'nobody', ['TR_x'], true), 'not_found', 404);
  await svc.deleteRoom(name);
});

test('SendData to a room (all, by identity, lossy) and to a missing room', async () => {
  const svc = client();
  const name = unique('node');
  await svc.createRoom({ name });
  await svc.sendData(name, new TextEncoder().encode('hello'), DataPacket_Kind.RELIABLE, { topic: 't' });
  await svc.sendData(name, new Uint8Array([1, 2, 3]), DataPacket_Kind.LOSSY, {
    destinationIdentities: ['someone'],
  });
  await rejects(
    svc.sendData(unique('missing'), new Uint8Array([1]), DataPacket_Kind.RELIABLE, {}),
    'not_found',
    404,
  );
  await svc.deleteRoom(name);
});

test('ForwardParticipant and MoveParticipant are unimplemented', async () => {
  const svc = client();
  await rejects(svc.forwardParticipant('a', 'b', 'c'), 'unimplemented', 501);
  await rejects(svc.moveParticipant('a', 'b', 'c'), 'unimplemented', 501);
});

async function token(grant) {
  const at = new AccessToken(API_KEY, API_SECRET, { ttl: 60 });
  at.addGrant(grant);
  return at.toJwt();
}

async function post(method, body, { contentType = 'application/json', auth, httpMethod = 'POST' } = {}) {
  const headers = {};
  if (contentType) headers['Content-Type'] = contentType;
  if (auth) headers.Authorization = `Bearer ${auth}`;
  const r = await fetch(`${url}/twirp/livekit.RoomService/${method}`, {
    method: httpMethod,
    headers,
    body: httpMethod === 'POST' ? body : undefined,
  });
  const text = await r.text();
  return { status: r.status, contentType: r.headers.get('content-type'), text };
}

test('PerformRpc over JSON Twirp: validation and not_found', async () => {
  const name = unique('node');
  await client().createRoom({ name });
  const auth = await token({ roomAdmin: true, room: name });
  let r = await post('PerformRpc', JSON.stringify({ room: name, destinationIdentity: 'nobody', method: 'm' }), { auth });
  assert.equal(r.status, 404, r.text);
  assert.equal(JSON.parse(r.text).code, 'not_found');
  r = await post('PerformRpc', JSON.stringify({ room: name, destination_identity: 'x' }), { auth });
  assert.equal(r.status, 400, r.text);
  assert.equal(JSON.parse(r.text).code, 'invalid_argument');
});

test('bad input gets Twirp JSON errors', async () => {
  const list = await token({ roomList: true });
  const create = await token({ roomCreate: true });
  const cases = [
    ['unknown method', 'NoSuchMethod', '{}', { auth: list }, 404, 'bad_route'],
    ['GET', 'ListRooms', '', { auth: list, httpMethod: 'GET' }, 404, 'bad_route'],
    ['other content type', 'ListRooms', '{}', { auth: list, contentType: 'text/xml' }, 404, 'bad_route'],
    ['malformed JSON', 'ListRooms', '{"names":', { auth: list }, 400, 'malformed'],
    ['no token', 'ListRooms', '{}', {}, 401, 'unauthenticated'],
    ['bad token', 'ListRooms', '{}', { auth: 'x.y.z' }, 401, 'unauthenticated'],
    ['grant does not cover', 'ListRooms', '{}', { auth: create }, 403, 'permission_denied'],
    ['oversized', 'ListRooms', ' '.repeat(1024 * 1024 + 10), { auth: list }, 413, 'resource_exhausted'],
  ];
  for (const [what, method, body, opts, status, code] of cases) {
    const r = await post(method, body, opts);
    assert.equal(r.status, status, `${what}: ${r.text}`);
    assert.equal(r.contentType, 'application/json', what);
    const err = JSON.parse(r.text);
    assert.equal(err.code, code, what);
    assert.equal(typeof err.msg, 'string', what);
    assert.equal(typeof err.meta, 'object', what);
  }
  // The SDK surfaces a permission error with its code.
  const noGrant = new RoomServiceClient(url, API_KEY, 'wrong-secret');
  await rejects(noGrant.listRooms(), 'unauthenticated', 401);
});
