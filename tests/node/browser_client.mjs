// A LiveKit participant in a real browser: livekit-client (UMD bundle) in headless
// Chromium, driven with playwright-core. Used by tests/python/test_browser.py.
//
//   node browser_client.mjs --url ws://127.0.0.1:PORT --token JWT --remote IDENTITY
//       [--publish-camera [--codec vp8|vp9|h264|av1]] [--publish-mic] [--expect-speaker IDENTITY]
//       [--expect-audio IDENTITY] [--expect-send-estimate KBPS] [--timeout SECONDS] [--hold SECONDS]
//
// Steps: serve a tiny page (and the livekit-client bundle) from an HTTP server on a free
// loopback port; open it in Chromium with a fake camera; connect to the room; with
// --publish-camera, publish the camera; with --publish-mic, the fake microphone (a beep
// every second, livekit-client's audio defaults); wait for a video track of participant
// IDENTITY, attach it to a <video> element and poll the receiver's getStats() until
// inbound-rtp framesDecoded > 0; with --expect-speaker, wait until livekit-client's
// room.activeSpeakers lists IDENTITY; with --expect-audio, wait for an audio track of
// IDENTITY, attach it and poll its receiver's inbound-rtp stats until 50 packets were
// received (decrypted) and audio samples came out of the jitter buffer; with
// --expect-send-estimate, wait until the camera's sender reports a send-side bandwidth
// estimate (candidate-pair availableOutgoingBitrate) of at least KBPS — it grows past
// Chromium's start value only on the server's transport-wide congestion feedback — and
// report the lowest estimate over the 10 s after that.
// Then stay connected until stdin closes (or --hold
// seconds pass) so the other side can go on receiving, disconnect and exit.
//
// Protocol: stdout carries one JSON object per line, {"event": ...}: "connected",
// "published", "published-mic", "decoded", "speaker", "audio", "send-estimate", "error", "closed". stderr carries the browser console and
// page errors as they happen, prefixed with "[browser]". Exit code 0 when every step
// succeeded. Every wait is bounded by --timeout (default 30 s). Chromium is always
// closed (playwright kills it at exit if closing takes more than 5 s).
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
const BUNDLE = resolve(HERE, 'node_modules', 'livekit-client', 'dist', 'livekit-client.umd.js');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
  '--allow-loopback-in-peer-connection',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
];

const { values: opts } = parseArgs({
  options: {
    url: { type: 'string' },
    token: { type: 'string' },
    remote: { type: 'string' },
    'publish-camera': { type: 'boolean', default: false },
    'publish-mic': { type: 'boolean', default: false },
    codec: { type: 'string', default: 'vp8' },
    'expect-speaker': { type: 'string' },
    'expect-audio': { type: 'string' },
    'expect-send-estimate': { type: 'string' },
    timeout: { type: 'string', default: '30' },
    hold: { type: 'string', default: '60' },
  },
});
if (!opts.url || !opts.token) {
  console.error('usage: browser_client.mjs --url WS_URL --token JWT [--remote IDENTITY] ...');
  process.exit(2);
}
const TIMEOUT_MS = Math.min(Number(opts.timeout), 30) * 1000;
const HOLD_MS = Number(opts.hold) * 1000;
// How long --expect-send-estimate watches the estimate after it first reaches the value.
const SEND_ESTIMATE_HOLD_MS = 10000;

// The page: livekit-client plus a few helpers the driver calls with page.evaluate.
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>relais browser client</title>
<script src="/livekit-client.umd.js"></script></head>
<body><div id="videos"></div>
<script>
const LK = window.LivekitClient;
LK.setLogLevel('info');
const state = { room: null, tracks: [], speakers: [] };

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error('timed out after ' + ms + ' ms: ' + what)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

window.relaisTest = {
  async connect(url, token, timeoutMs) {
    const room = new LK.Room({ adaptiveStream: true, dynacast: true });
    state.room = room;
    room.on(LK.RoomEvent.TrackSubscribed, (track, pub, participant) => {
      console.log('track subscribed: ' + track.kind + ' ' + pub.trackSid + ' from ' + participant.identity);
      state.tracks.push({ track, pub, participant: participant.identity });
    });
    room.on(LK.RoomEvent.ActiveSpeakersChanged, (speakers) => {
      state.speakers.push(speakers.map((p) => p.identity));
    });
    room.on(LK.RoomEvent.Disconnected, (reason) => console.log('room disconnected, reason ' + reason));
    await withTimeout(room.connect(url, token), timeoutMs, 'room.connect');
    return { sid: room.localParticipant.sid, identity: room.localParticipant.identity,
             room: room.name, version: LK.version, protocol: LK.protocolVersion };
  },

  async publishCamera(codec, timeoutMs) {
    const pub = await withTimeout(
      state.room.localParticipant.setCameraEnabled(true, undefined, { videoCodec: codec }),
      timeoutMs, 'publish camera');
    if (!pub) throw new Error('setCameraEnabled returned no publication');
    return { trackSid: pub.trackSid, simulcasted: !!pub.simulcasted,
             width: pub.dimensions ? pub.dimensions.width : 0, height: pub.dimensions ? pub.dimensions.height : 0 };
  },

  // The fake microphone, with livekit-client's defaults (Opus, RED on).
  async publishMic(timeoutMs) {
    const pub = await withTimeout(
      state.room.localParticipant.setMicrophoneEnabled(true),
      timeoutMs, 'publish microphone');
    if (!pub) throw new Error('setMicrophoneEnabled returned no publication');
    return { trackSid: pub.trackSid, mimeType: pub.mimeType || '' };
  },

  // Wait for a video track from \`identity\`, show it, and poll its receiver's stats
  // until at least one frame was decoded.
  async waitDecoded(identity, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    let last = 'no video track from ' + identity + ' subscribed';
    let attached = null;
    while (Date.now() < deadline) {
      const entry = state.tracks.find((t) => t.participant === identity && t.track.kind === 'video');
      if (entry) {
        if (!attached) {
          attached = entry.track.attach();
          attached.muted = true;
          attached.width = 320;
          attached.height = 240;
          document.getElementById('videos').appendChild(attached);
        }
        const receiver = entry.track.receiver;
        if (receiver) {
          const report = await receiver.getStats();
          for (const s of report.values()) {
            if (s.type === 'inbound-rtp' && s.kind === 'video') {
              // What a timeout reports: enough to tell "nothing arrived" (paused,
              // never sent) from "arrived but undecodable" (no keyframe).
              last = 'inbound-rtp: packetsReceived ' + s.packetsReceived + ', framesDecoded ' +
                s.framesDecoded + ', keyFramesDecoded ' + s.keyFramesDecoded + ', pliCount ' +
                s.pliCount + ', nackCount ' + s.nackCount + '; publication enabled ' +
                entry.pub.isEnabled + ', muted ' + entry.pub.isMuted + ', quality ' +
                entry.pub.videoQuality;
              if (s.framesDecoded > 0) {
                return { trackSid: entry.track.sid, framesDecoded: s.framesDecoded,
                         packetsReceived: s.packetsReceived, frameWidth: s.frameWidth || 0,
                         frameHeight: s.frameHeight || 0, decoder: s.decoderImplementation || '' };
              }
            }
          }
        } else {
          last = 'subscribed track has no receiver';
        }
      }
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error('timed out after ' + timeoutMs + ' ms waiting for framesDecoded > 0 (' + last + ')');
  },

  // Wait for an audio track from \`identity\`, attach it, and poll its receiver's stats
  // until 50 packets were received and samples were produced from them.
  async waitAudio(identity, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    let last = 'no audio track from ' + identity + ' subscribed';
    let attached = null;
    while (Date.now() < deadline) {
      const entry = state.tracks.find((t) => t.participant === identity && t.track.kind === 'audio');
      if (entry) {
        if (!attached) {
          attached = entry.track.attach();
          document.getElementById('videos').appendChild(attached);
        }
        const receiver = entry.track.receiver;
        if (receiver) {
          const report = await receiver.getStats();
          for (const s of report.values()) {
            if (s.type === 'inbound-rtp' && s.kind === 'audio') {
              last = 'inbound-rtp: packetsReceived ' + s.packetsReceived +
                ', totalSamplesReceived ' + s.totalSamplesReceived;
              if (s.packetsReceived >= 50 && s.totalSamplesReceived > 0) {
                return { trackSid: entry.track.sid, packetsReceived: s.packetsReceived,
                         packetsLost: s.packetsLost || 0,
                         totalSamplesReceived: s.totalSamplesReceived,
                         concealedSamples: s.concealedSamples || 0,
                         totalAudioEnergy: s.totalAudioEnergy || 0 };
              }
            }
          }
        }
      }
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error('timed out after ' + timeoutMs + ' ms waiting for received audio (' + last + ')');
  },

  // Wait until the room lists \`identity\` among its active speakers.
  async waitSpeaker(identity, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      // Room.activeSpeakers is the state apps read; the event may have fired
      // before the room counted as connected (livekit-client then skips it).
      const now = state.room.activeSpeakers.map((p) => p.identity);
      if (now.includes(identity)) return { speakers: now, events: state.speakers };
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error('timed out after ' + timeoutMs + ' ms waiting for ' + identity +
      ' among the active speakers (seen: ' + JSON.stringify(state.speakers) + ')');
  },

  // Per-layer outbound-rtp stats of the published camera (for diagnosis).
  async senderStats() {
    const out = [];
    for (const pub of state.room.localParticipant.videoTrackPublications.values()) {
      const sender = pub.track && pub.track.sender;
      if (!sender) continue;
      const report = await sender.getStats();
      for (const s of report.values()) {
        if (s.type === 'outbound-rtp') {
          out.push({ rid: s.rid || '', active: s.active, frameWidth: s.frameWidth || 0,
                     frameHeight: s.frameHeight || 0, framesSent: s.framesSent || 0,
                     keyFramesEncoded: s.keyFramesEncoded || 0, pliCount: s.pliCount || 0,
                     nackCount: s.nackCount || 0, targetBitrate: s.targetBitrate || 0,
                     qualityLimitationReason: s.qualityLimitationReason || '' });
        }
      }
    }
    return out;
  },

  // Wait until the camera's send-side bandwidth estimate reaches minBps, then watch it
  // for holdMs more (an estimate fed by feedback on the first packets only falls back
  // once the feedback stops); returns the lowest estimate over that window, the
  // estimates seen (one per poll) and the layers' stats at the end.
  async waitSendEstimate(minBps, holdMs, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    const seen = [];
    let reached = null;
    let lowest = Infinity;
    while (Date.now() < deadline) {
      for (const pub of state.room.localParticipant.videoTrackPublications.values()) {
        const sender = pub.track && pub.track.sender;
        if (!sender) continue;
        const report = await sender.getStats();
        for (const s of report.values()) {
          if (s.type !== 'candidate-pair' || !s.nominated || !s.availableOutgoingBitrate) continue;
          const bps = Math.round(s.availableOutgoingBitrate);
          seen.push(bps);
          if (reached === null && bps >= minBps) reached = Date.now();
          if (reached !== null) lowest = Math.min(lowest, bps);
        }
      }
      if (reached !== null && Date.now() - reached >= holdMs) {
        return { lowest, seen, layers: await this.senderStats() };
      }
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error('timed out after ' + timeoutMs + ' ms waiting for a send estimate of ' +
      minBps + ' bps held for ' + holdMs + ' ms (seen: ' + JSON.stringify(seen.slice(-40)) + ')');
  },

  async disconnect() {
    if (state.room) await withTimeout(state.room.disconnect(), 5000, 'room.disconnect');
  },
};
</script></body></html>`;

function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, t: Date.now(), ...fields }) + "\n");
}

function serve() {
  return new Promise((resolveServer, reject) => {
    const server = createServer(async (req, res) => {
      try {
        if (req.url === '/' || req.url.startsWith('/?')) {
          res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
          res.end(PAGE);
        } else if (req.url === '/livekit-client.umd.js') {
          res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' });
          res.end(await readFile(BUNDLE));
        } else {
          res.writeHead(404);
          res.end();
        }
      } catch (e) {
        res.writeHead(500);
        res.end(String(e));
      }
    });
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => resolveServer(server));
  });
}

// Resolves when stdin ends (the driving test is done) or after `ms`.
function stdinClosedOr(ms) {
  return new Promise((done) => {
    const timer = setTimeout(done, ms);
    process.stdin.on('end', () => {
      clearTimeout(timer);
      done();
    });
    process.stdin.on('error', () => {
      clearTimeout(timer);
      done();
    });
    process.stdin.resume();
  });
}

// Playwright kills the browsers it launched when this process exits, and the driving
// test kills this process group at the end; a bounded close is all that is needed here.
async function closeBrowser(browser) {
  if (!browser) return;
  const closed = await Promise.race([
    browser.close().then(
      () => true,
      () => false,
    ),
    new Promise((r) => setTimeout(() => r(false), 5000)),
  ]);
  if (!closed) console.error('chromium did not close within 5 s: it is killed when this process exits');
}

async function main() {
  if (!existsSync(BUNDLE)) throw new Error(`livekit-client bundle not found at ${BUNDLE} (npm ci in tests/node)`);
  const http = await serve();
  let browser = null;
  let failed = false;
  const stop = async () => {
    await closeBrowser(browser);
    http.close();
  };
  for (const sig of ['SIGTERM', 'SIGINT']) {
    process.on(sig, () => stop().finally(() => process.exit(1)));
  }
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: TIMEOUT_MS,
    });
    const context = await browser.newContext({ permissions: ['camera', 'microphone'] });
    const page = await context.newPage();
    page.on('console', (msg) => console.error(`[browser ${msg.type()}] ${msg.text()}`));
    page.on('pageerror', (err) => console.error(`[browser pageerror] ${err.stack || err}`));
    page.on('crash', () => console.error('[browser] page crashed'));
    page.setDefaultTimeout(TIMEOUT_MS + 5000);

    const { port } = http.address();
    await page.goto(`http://127.0.0.1:${port}/`, { timeout: TIMEOUT_MS });
    await page.waitForFunction(() => !!window.relaisTest && !!window.LivekitClient, null, {
      timeout: TIMEOUT_MS,
    });

    const info = await page.evaluate(([u, t, ms]) => window.relaisTest.connect(u, t, ms), [
      opts.url,
      opts.token,
      TIMEOUT_MS,
    ]);
    emit('connected', info);

    if (opts['publish-camera']) {
      const pub = await page.evaluate(([codec, ms]) => window.relaisTest.publishCamera(codec, ms), [
        opts.codec,
        TIMEOUT_MS,
      ]);
      emit('published', pub);
    }

    if (opts['publish-mic']) {
      const pub = await page.evaluate((ms) => window.relaisTest.publishMic(ms), TIMEOUT_MS);
      emit('published-mic', pub);
    }

    if (opts.remote) {
      const stats = await page.evaluate(([id, ms]) => window.relaisTest.waitDecoded(id, ms), [
        opts.remote,
        TIMEOUT_MS,
      ]);
      emit('decoded', stats);
    }

    if (opts['expect-speaker']) {
      const seen = await page.evaluate(([id, ms]) => window.relaisTest.waitSpeaker(id, ms), [
        opts['expect-speaker'],
        TIMEOUT_MS,
      ]);
      emit('speaker', seen);
    }

    if (opts['expect-audio']) {
      const heard = await page.evaluate(([id, ms]) => window.relaisTest.waitAudio(id, ms), [
        opts['expect-audio'],
        TIMEOUT_MS,
      ]);
      emit('audio', heard);
    }

    if (opts['expect-send-estimate']) {
      const estimate = await page.evaluate(([bps, hold, ms]) => window.relaisTest.waitSendEstimate(bps, hold, ms), [
        Number(opts['expect-send-estimate']) * 1000,
        SEND_ESTIMATE_HOLD_MS,
        TIMEOUT_MS,
      ]);
      emit('send-estimate', estimate);
    }

    await stdinClosedOr(HOLD_MS);
    if (opts['publish-camera']) {
      const layers = await page.evaluate(() => window.relaisTest.senderStats()).catch((e) => String(e));
      emit('sender', { layers });
    }
    await page.evaluate(() => window.relaisTest.disconnect()).catch((e) => {
      console.error(`disconnect failed: ${e}`);
    });
  } catch (e) {
    failed = true;
    emit('error', { message: String(e && e.message ? e.message : e) });
  } finally {
    await stop();
    emit('closed');
  }
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
