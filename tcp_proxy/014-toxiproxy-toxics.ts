#!/usr/bin/env bun
/*
 * 014 - toxiproxy's toxics: its faults with its semantics
 *
 * Adds:   the toxics as toxiproxy 2.12.0 defines them, so that a test written for toxiproxy sees the same faults
 *         (docs/toxiproxy.md maps them point by point): noop; latency and jitter; bandwidth in KB of 1000 bytes (0
 *         holds the data); slicer; limit_data; slow_close (holds the end of the stream); timeout (drops the data,
 *         closes after that long without any; removed, it closes the connection: bytes were lost); reset_peer (its
 *         timer starts at the first data, which it drops). Toxics read as toxiproxy reads them: every attribute an
 *         integer defaulting to 0, negative values accepted where toxiproxy accepts them, keys in any case,
 *         unknown attributes ignored, stream echoed as given, toxiproxy's error texts. A change reaches held bytes
 *         at once. --seed repeats a run's random choices; /metrics counts the bytes each toxic dropped.
 *         Better than toxiproxy, without breaking a client: half-close kept; no attribute crashes the process; a
 *         change is checked whole before it applies; toxicity drawn once per connection (again only when that
 *         toxic changes) and a reset_peer acts only where it applies; --seed is used (toxiproxy ignores it).
 * Lacks:  upstreams found through DNS (015). TLS, UDP, HTTP awareness.
 *
 * Try it: bun tcp_echo_server/005-bounded-concurrency.ts --port 5000
 *         bun tcp_proxy/014-toxiproxy-toxics.ts --port 6000 --upstream 127.0.0.1:5000 --api-port 8474
 *         curl -X POST 127.0.0.1:8474/proxies/default/toxics \
 *             -d '{"type":"timeout","stream":"upstream","attributes":{"timeout":5000}}'
 *         nc 127.0.0.1 6000                       (what you type is dropped; 5 s without typing closes it)
 *         curl 127.0.0.1:8474/metrics             (the bytes the timeout dropped)
 */
/*
 * Layout (* = new or changed since 013):
 *   Logger, settings, Queue              logs on stderr, the configuration (* --seed)
 *   Addresses, CIDR lists, PROXY         parseIp, formatIp, cidrContains, proxyHeader, parseProxyHeader
 * * Toxics                               * toxiproxy's TOXIC_TYPES, makeToxic() its way, chance/seeded,
 *                                        delayed/paced (* KB of 1000)/sliced, Lane (* retime)
 *   The HTTP API                         TOXIPROXY_VERSION, field(), readBody, toxiproxy's 404 and 405
 * * Metrics                              the Prometheus text, ProxyCounters (* dropped bytes)
 * * Connection                           * refreshToxics: timeout drops, reset_peer at first data, slow_close
 *                                        holds the end (holdEnd, holding)
 *   Upstream, Pool                       the upstreams, balancing, health checks
 * * Proxy                                counters, listed(), * a toxic changed in one step (makeToxic(body, it))
 *   ControlPlane                         parseProxy, populate, reset, /version, /populate, /metrics
 *   Command line                         HELP, parse*(), --config (loadConfigFile), * --seed, --version
 */

import type { Socket, TCPSocketListener } from "bun";
import { parseArgs } from "node:util";
import pc from "picocolors";
import { readFileSync } from "node:fs";
import { basename, relative } from "node:path";

const LEVELS = ["debug", "info", "warn", "error"] as const;
type Level = (typeof LEVELS)[number];

const LEVEL_COLOURS: Record<Level, (text: string) => string> = {
  debug: pc.dim,
  info: pc.green,
  warn: pc.yellow,
  error: pc.red,
};

/** Timestamped, levelled log lines on stderr; stdout is kept for the machine-readable listening line. */
class Logger {
  private readonly threshold: number;

  constructor(level: Level) {
    this.threshold = LEVELS.indexOf(level);
  }

  enabled(level: Level): boolean {
    return LEVELS.indexOf(level) >= this.threshold;
  }

  private write(level: Level, message: string): void {
    if (!this.enabled(level)) return;
    const time = pc.dim(new Date().toISOString());
    const label = LEVEL_COLOURS[level](level.toUpperCase().padEnd(5));
    process.stderr.write(`${time} ${label} ${message}\n`);
  }

  debug(message: string): void {
    this.write("debug", message);
  }
  info(message: string): void {
    this.write("info", message);
  }
  warn(message: string): void {
    this.write("warn", message);
  }
  error(message: string): void {
    this.write("error", message);
  }
}

interface Address {
  host: string;
  port: number;
}

interface ProxyConfig {
  /** The proxy's name in the API (toxiproxy's proxies are named). */
  name: string;
  /** Whether the command line asks for a proxy at all: --api-port alone starts none, as toxiproxy-server. */
  serveProxy: boolean;
  host: string;
  port: number;
  upstreams: Address[];
  pool: PoolConfig;
  timeouts: Timeouts;
  limits: Limits;
  edges: Edges;
  /** The toxics from --toxic, in force at start. */
  toxics: Toxic[];
  /** Address of the HTTP control API for toxics; undefined = none (the --toxic flags stay as they are). */
  api: Address | undefined;
  /** --config: toxiproxy's JSON list of proxies, created at start. */
  configFile: string | undefined;
  /** --seed: every random choice of the toxics from this seed, so that a run can be repeated. */
  seed: number | undefined;
  logLevel: Level;
}

/**
 * Most bytes held for a direction whose destination is not connected yet. One `data` event can bring up to
 * 512 KiB, so the queue may briefly hold a little more; the point is that it stops growing.
 */
const EARLY_BYTES_LIMIT = 256 * 1024;

type Side = "client" | "upstream";

/** What each socket carries in `socket.data`: its connection and which end of it this socket is. */
interface Link {
  connection: Connection;
  side: Side;
}

/** Bytes on their way to one socket that it has not taken yet, oldest first. */
class Queue {
  private chunks: Uint8Array[] = [];
  bytes = 0;

  get empty(): boolean {
    return this.bytes === 0;
  }

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bytes += chunk.length;
  }

  /** Puts `chunk` before everything queued (a PROXY header goes before the client's early bytes). */
  pushFront(chunk: Uint8Array): void {
    this.chunks.unshift(chunk);
    this.bytes += chunk.length;
  }

  /** Writes as much as `socket` takes; true when everything went out. */
  flushTo(socket: Socket<Link>): boolean {
    while (this.chunks.length > 0) {
      const head = this.chunks[0]!;
      const written = socket.write(head);
      if (written < 0) return false; // closed: `close` will tidy up
      this.bytes -= written;
      if (written < head.length) {
        this.chunks[0] = head.subarray(written);
        return false; // the kernel is full: `drain` calls us again
      }
      this.chunks.shift();
    }
    return true;
  }
}

// ---- Addresses, CIDR lists and the PROXY protocol -------------------------------------------------------------

/** An IP address as bytes: 4 for IPv4, 16 for IPv6. IPv4-mapped IPv6 (::ffff:1.2.3.4) is read as IPv4. */
type Ip = Uint8Array;

interface Endpoint {
  ip: Ip;
  port: number;
}

function parseIp(text: string): Ip | undefined {
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(text)) {
    const parts = text.split(".");
    if (parts.some((part) => Number(part) > 255 || (part.length > 1 && part.startsWith("0")))) return undefined;
    return new Uint8Array(parts.map(Number));
  }
  if (!text.includes(":")) return undefined;
  let hex = text;
  let ipv4Tail: Ip | undefined;
  const lastColon = text.lastIndexOf(":");
  if (text.includes(".", lastColon)) {
    // ::ffff:192.0.2.1 and friends: the last 32 bits written as IPv4
    ipv4Tail = parseIp(text.slice(lastColon + 1));
    if (ipv4Tail?.length !== 4) return undefined;
    hex = `${text.slice(0, lastColon + 1)}0:0`;
  }
  const halves = hex.split("::");
  if (halves.length > 2) return undefined;
  const groups = (part: string): number[] | undefined => {
    if (part === "") return [];
    const values = part.split(":").map((group) => (/^[0-9a-fA-F]{1,4}$/.test(group) ? parseInt(group, 16) : NaN));
    return values.some(Number.isNaN) ? undefined : values;
  };
  const left = groups(halves[0]!);
  const right = halves.length === 2 ? groups(halves[1]!) : [];
  if (left === undefined || right === undefined) return undefined;
  const missing = 8 - left.length - right.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return undefined;
  const all = [...left, ...new Array<number>(halves.length === 2 ? missing : 0).fill(0), ...right];
  const bytes = new Uint8Array(16);
  all.forEach((group, i) => {
    bytes[2 * i] = group >> 8;
    bytes[2 * i + 1] = group & 0xff;
  });
  if (ipv4Tail) bytes.set(ipv4Tail, 12);
  const mapped = bytes.subarray(0, 10).every((byte) => byte === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
  return mapped ? bytes.slice(12) : bytes;
}

/** Text form: dotted IPv4, or IPv6 with the longest run of zero groups written "::" (RFC 5952). */
function formatIp(ip: Ip): string {
  if (ip.length === 4) return ip.join(".");
  const groups = Array.from({ length: 8 }, (_, i) => (ip[2 * i]! << 8) | ip[2 * i + 1]!);
  let [bestStart, bestLength] = [-1, 1];
  for (let start = 0; start < 8; start++) {
    let length = 0;
    while (start + length < 8 && groups[start + length] === 0) length++;
    if (length > bestLength) [bestStart, bestLength] = [start, length];
  }
  const hex = groups.map((group) => group.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLength).join(":")}`;
}

interface Cidr {
  text: string;
  network: Ip;
  bits: number;
}

function parseCidr(text: string): Cidr | undefined {
  const parts = text.split("/");
  if (parts.length > 2) return undefined;
  const [address = "", bitsText] = parts;
  const network = parseIp(address);
  if (network === undefined) return undefined;
  const max = network.length * 8;
  // An IPv4-mapped network given in IPv6 form had its prefix counted over 128 bits.
  const mappedOffset = address.includes(":") && network.length === 4 ? 96 : 0;
  const bits = bitsText === undefined ? max : Number(bitsText) - mappedOffset;
  if (bitsText !== undefined && !/^\d{1,3}$/.test(bitsText)) return undefined;
  if (!(bits >= 0 && bits <= max)) return undefined;
  return { text, network, bits };
}

function cidrContains(cidr: Cidr, ip: Ip): boolean {
  if (ip.length !== cidr.network.length) return false;
  let bits = cidr.bits;
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((ip[i]! & mask) !== (cidr.network[i]! & mask)) return false;
  }
  return true;
}

const PROXY_V2_SIGNATURE = new Uint8Array([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const PROXY_V1_PREFIX = new TextEncoder().encode("PROXY ");
/** A v1 line is at most 107 bytes with its CRLF (the spec's worst case, TCP6 with the longest addresses). */
const PROXY_V1_MAX = 107;
/** v2 allows 64 KiB of TLVs after the addresses; more than this from a load balancer is not worth buffering. */
const PROXY_V2_MAX_LENGTH = 2048;

/** The PROXY header that tells the upstream who the client really is (its own peer is the proxy). */
function proxyHeader(version: 1 | 2, source: Endpoint | undefined, destination: Endpoint | undefined): Uint8Array {
  const known = source !== undefined && destination !== undefined && source.ip.length === destination.ip.length;
  if (version === 1) {
    if (!known) return new TextEncoder().encode("PROXY UNKNOWN\r\n");
    const family = source.ip.length === 4 ? "TCP4" : "TCP6";
    const addresses = `${formatIp(source.ip)} ${formatIp(destination.ip)}`;
    return new TextEncoder().encode(`PROXY ${family} ${addresses} ${source.port} ${destination.port}\r\n`);
  }
  if (!known) return new Uint8Array([...PROXY_V2_SIGNATURE, 0x21, 0x00, 0x00, 0x00]); // PROXY, AF_UNSPEC
  const size = source.ip.length;
  const header = new Uint8Array(16 + 2 * size + 4);
  header.set(PROXY_V2_SIGNATURE);
  header[12] = 0x21; // version 2, command PROXY
  header[13] = size === 4 ? 0x11 : 0x21; // TCP over IPv4 / IPv6
  new DataView(header.buffer).setUint16(14, 2 * size + 4);
  header.set(source.ip, 16);
  header.set(destination.ip, 16 + size);
  new DataView(header.buffer).setUint16(16 + 2 * size, source.port);
  new DataView(header.buffer).setUint16(18 + 2 * size, destination.port);
  return header;
}

type HeaderParse =
  | { status: "incomplete" }
  | { status: "invalid"; reason: string }
  | { status: "ok"; version: 1 | 2; length: number; source?: Endpoint; destination?: Endpoint };

function startsLike(bytes: Uint8Array, prefix: Uint8Array): boolean {
  const length = Math.min(bytes.length, prefix.length);
  for (let i = 0; i < length; i++) if (bytes[i] !== prefix[i]) return false;
  return true;
}

/** Reads a PROXY header, v1 or v2, at the start of `bytes`: done, invalid, or more bytes needed. */
function parseProxyHeader(bytes: Uint8Array): HeaderParse {
  const invalid = (reason: string): HeaderParse => ({ status: "invalid", reason });
  if (bytes.length === 0) return { status: "incomplete" };
  if (startsLike(bytes, PROXY_V1_PREFIX)) {
    let end = -1;
    for (let i = 1; i < Math.min(bytes.length, PROXY_V1_MAX); i++) {
      if (bytes[i - 1] === 0x0d && bytes[i] === 0x0a) {
        end = i + 1;
        break;
      }
    }
    if (end < 0)
      return bytes.length >= PROXY_V1_MAX ? invalid("v1 line longer than 107 bytes") : { status: "incomplete" };
    const fields = new TextDecoder().decode(bytes.subarray(0, end - 2)).split(" ");
    if (fields[1] === "UNKNOWN") return { status: "ok", version: 1, length: end };
    if (fields.length !== 6 || (fields[1] !== "TCP4" && fields[1] !== "TCP6")) return invalid("malformed v1 line");
    const [source, destination] = [parseIp(fields[2]!), parseIp(fields[3]!)];
    const ports = [fields[4]!, fields[5]!].map((port) => (/^(0|[1-9]\d{0,4})$/.test(port) ? Number(port) : NaN));
    const ipv4 = fields[1] === "TCP4";
    const familyOk = (text: string) => (ipv4 ? !text.includes(":") : text.includes(":"));
    if (!source || !destination || !familyOk(fields[2]!) || !familyOk(fields[3]!)) return invalid("bad v1 address");
    if (ports.some((port) => !(port <= 65535))) return invalid("bad v1 port");
    return {
      status: "ok",
      version: 1,
      length: end,
      source: { ip: source, port: ports[0]! },
      destination: { ip: destination, port: ports[1]! },
    };
  }
  if (startsLike(bytes, PROXY_V2_SIGNATURE)) {
    if (bytes.length < 16) return { status: "incomplete" };
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const [versionCommand, family, length] = [bytes[12]!, bytes[13]!, view.getUint16(14)];
    if (versionCommand >> 4 !== 2) return invalid(`v2 version ${versionCommand >> 4}`);
    const command = versionCommand & 0x0f;
    if (command > 1) return invalid(`v2 command ${command}`);
    if (length > PROXY_V2_MAX_LENGTH) return invalid(`v2 header of ${length} bytes`);
    if (bytes.length < 16 + length) return { status: "incomplete" };
    // LOCAL (the balancer's own health check) or a family that is not TCP: keep the real connection's endpoints.
    if (command === 0 || (family !== 0x11 && family !== 0x21)) return { status: "ok", version: 2, length: 16 + length };
    const size = family === 0x11 ? 4 : 16;
    if (length < 2 * size + 4) return invalid("v2 address block too short");
    return {
      status: "ok",
      version: 2,
      length: 16 + length,
      source: { ip: bytes.slice(16, 16 + size), port: view.getUint16(16 + 2 * size) },
      destination: { ip: bytes.slice(16 + size, 16 + 2 * size), port: view.getUint16(18 + 2 * size) },
    };
  }
  return invalid("no PROXY header");
}

// ---- Toxics: toxiproxy's, with its units, defaults and semantics ----------------------------------------------

/**
 * The largest value a toxic attribute takes: 2^31-1, the longest a JS timer can wait in milliseconds (about 24.8
 * days; setTimeout fires at once past it). Only limit_data's bytes go higher.
 */
const MAX_ATTRIBUTE = 2 ** 31 - 1;

/**
 * toxiproxy's toxic types, each attribute an integer that defaults to 0, in toxiproxy's order, with the range
 * accepted. A negative value is accepted where toxiproxy accepts it, and means what it means there (a negative
 * latency or timeout is 0); where toxiproxy crashes on it (a negative bandwidth rate) it is refused.
 */
const TOXIC_TYPES = {
  /** Passes everything. */
  noop: {},
  /** Delays every chunk by latency ms, plus or minus up to jitter ms, from when it was read (order is kept). */
  latency: { latency: [-MAX_ATTRIBUTE, MAX_ATTRIBUTE], jitter: [-MAX_ATTRIBUTE, MAX_ATTRIBUTE] },
  /** At most rate KB/s, KB = 1000 bytes as toxiproxy counts it; 0 lets nothing through until it is removed. */
  bandwidth: { rate: [0, MAX_ATTRIBUTE] },
  /** Holds the end of the stream (FIN or close) for delay ms before passing it on. */
  slow_close: { delay: [-MAX_ATTRIBUTE, MAX_ATTRIBUTE] },
  /** Reads and drops the data; closes the connection after timeout ms without data (0: never). */
  timeout: { timeout: [-MAX_ATTRIBUTE, MAX_ATTRIBUTE] },
  /** At the first data: drops it, reads no more, and resets (RST) the connection timeout ms later. */
  reset_peer: { timeout: [-MAX_ATTRIBUTE, MAX_ATTRIBUTE] },
  /** Cuts data into pieces of average_size +- size_variation bytes, delay microseconds apart (0 size: uncut). */
  slicer: {
    average_size: [-MAX_ATTRIBUTE, MAX_ATTRIBUTE],
    size_variation: [-MAX_ATTRIBUTE, MAX_ATTRIBUTE],
    delay: [-MAX_ATTRIBUTE, MAX_ATTRIBUTE],
  },
  /** Lets `bytes` bytes through, then closes the connection. */
  limit_data: { bytes: [-Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER] },
} as const satisfies Record<string, Record<string, readonly [number, number]>>;

type ToxicType = keyof typeof TOXIC_TYPES;
/** toxiproxy's names: "upstream" is the client-to-upstream direction, "downstream" the way back. */
type Stream = "upstream" | "downstream";

/** A toxic as toxiproxy shows it (its key order too). */
interface Toxic {
  attributes: Record<string, number>;
  name: string;
  type: ToxicType;
  /** As the client gave it: toxiproxy reads it case-insensitively and echoes it unchanged ("UPSTREAM"). */
  stream: string;
  /** Probability that the toxic applies to a connection: above 1 always, 0 or below never (as in toxiproxy). */
  toxicity: number;
}

/** The direction a toxic acts on. */
const direction = (toxic: Toxic): Stream => toxic.stream.toLowerCase() as Stream;

class ToxicError extends Error {}

/**
 * A toxic from a JSON body, read as toxiproxy reads it: stream downstream, toxicity 1, name TYPE_STREAM and every
 * attribute 0 unless given; keys matched regardless of case, unknown keys ignored; refusals with toxiproxy's
 * messages. With `existing`, the body changes that toxic: its toxicity and the attributes it names, nothing else.
 * Everything is checked before anything changes.
 */
function makeToxic(input: Record<string, unknown>, existing?: Toxic): Toxic {
  const stream = existing?.stream ?? field(input, "stream") ?? "downstream";
  if (typeof stream !== "string" || !["upstream", "downstream"].includes(stream.toLowerCase())) {
    throw new ToxicError("stream was invalid, can be either upstream or downstream");
  }
  const type = existing?.type ?? field(input, "type");
  if (type !== undefined && typeof type !== "string") throw new ToxicError("bad request body: type must be a string");
  if (type === undefined || !(type in TOXIC_TYPES)) throw new ToxicError("invalid toxic type");
  const name = existing?.name ?? field(input, "name") ?? "";
  if (typeof name !== "string") throw new ToxicError("bad request body: name must be a string");
  const toxicity = field(input, "toxicity") ?? existing?.toxicity ?? 1;
  if (typeof toxicity !== "number") throw new ToxicError("bad request body: toxicity must be a number");
  const given = field(input, "attributes") ?? {};
  if (!isObject(given)) throw new ToxicError("bad request body: attributes must be an object");
  const specs: Record<string, readonly [number, number]> = TOXIC_TYPES[type as ToxicType];
  const attributes: Record<string, number> = {};
  for (const [key, [min, max]] of Object.entries(specs)) {
    const value = field(given, key) ?? existing?.attributes[key] ?? 0;
    if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
      throw new ToxicError(`bad request body: ${key} must be an integer from ${min} to ${max}, got ${value}`);
    }
    attributes[key] = value;
  }
  return { attributes, name: name || `${type}_${stream}`, type: type as ToxicType, stream, toxicity };
}

function describeToxic(toxic: Toxic): string {
  const attributes = Object.entries(toxic.attributes).map(([key, value]) => `${key}=${value}`);
  return `${toxic.name} (${toxic.type} ${toxic.stream} ${attributes.join(" ")} toxicity=${toxic.toxicity})`;
}

/** The toxics in force, shared by every connection; the HTTP API changes them while the proxy runs. */
class ToxicSet {
  list: Toxic[];

  constructor(initial: Toxic[]) {
    this.list = [...initial];
  }

  get(name: string): Toxic | undefined {
    return this.list.find((toxic) => toxic.name === name);
  }

  /** Replaces or adds `toxic` (a new object, so every connection draws its toxicity again). */
  set(toxic: Toxic): void {
    const index = this.list.findIndex((existing) => existing.name === toxic.name);
    if (index < 0) this.list = [...this.list, toxic];
    else this.list = this.list.map((existing, i) => (i === index ? toxic : existing));
  }

  remove(name: string): void {
    this.list = this.list.filter((toxic) => toxic.name !== name);
  }
}

/**
 * Every random choice the toxics make (toxicity, jitter, slicer sizes): Math.random, or with --seed a seeded
 * generator, so that a run can be repeated (toxiproxy takes -seed and then uses it for nothing, its issue #274).
 */
let chance: () => number = Math.random;

/** mulberry32: a small seeded generator, enough to make a run repeatable. */
function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let mixed = Math.imul(state ^ (state >>> 15), state | 1);
    mixed ^= mixed + Math.imul(mixed ^ (mixed >>> 7), mixed | 61);
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 4294967296;
  };
}

/** The toxics of a connection that meets none: one shared empty list, never written to. */
const NO_TOXICS: readonly Toxic[] = [];

/**
 * Time as the toxics see it: the real clock and timers in the proxy, a hand-driven clock in the tests, so the
 * arithmetic of delays and pacing is checked to the millisecond without waiting for it.
 */
interface Clock {
  now(): number;
  setTimer(callback: () => void, ms: number): unknown;
  clearTimer(timer: unknown): void;
}

const REAL_CLOCK: Clock = {
  now: () => performance.now(),
  setTimer: (callback, ms) => setTimeout(callback, ms),
  clearTimer: (timer) => clearTimeout(timer as Timer | undefined),
};

/** A piece of data on its way, and when it may be delivered (clock milliseconds). */
interface Piece {
  bytes: Uint8Array;
  at: number;
}

/** latency: each piece `latency` ms later, plus or minus up to `jitter` ms (never before it came). */
function* delayed(pieces: Iterable<Piece>, latency: number, jitter: number, random: () => number): Generator<Piece> {
  const spread = Math.max(0, jitter); // a negative jitter is none, as in toxiproxy
  for (const { bytes, at } of pieces) yield { bytes, at: at + Math.max(0, latency + spread * (2 * random() - 1)) };
}

/**
 * bandwidth: `rate` KB/s, 1000 bytes a KB as toxiproxy counts them, in pieces of 10 ms worth, each due once the
 * bytes before it have gone through. A rate of 0 lets nothing through (until the toxic goes), as in toxiproxy.
 */
function* paced(pieces: Iterable<Piece>, rate: number, pace: { at: number }): Generator<Piece> {
  if (rate <= 0) {
    for (const { bytes } of pieces) yield { bytes, at: Infinity };
    return;
  }
  const bytesPerMs = rate; // rate * 1000 bytes / 1000 ms
  const size = Math.max(1, Math.round(bytesPerMs * 10)); // 10 ms worth: smooth, not one burst a second
  for (const { bytes, at } of pieces) {
    for (let offset = 0; offset < bytes.length; offset += size) {
      const slice = bytes.subarray(offset, offset + size);
      pace.at = Math.max(pace.at, at) + slice.length / bytesPerMs;
      yield { bytes: slice, at: pace.at };
    }
  }
}

/**
 * slicer: pieces of average_size +- size_variation bytes (at least 1), `delay` microseconds apart. An average size
 * of 0 or less leaves the data uncut (toxiproxy recurses until its stack overflows and the process dies).
 */
function* sliced(
  pieces: Iterable<Piece>,
  averageSize: number,
  sizeVariation: number,
  delayUs: number,
  random: () => number,
): Generator<Piece> {
  const [average, variation] = [averageSize, Math.max(0, sizeVariation)];
  for (const { bytes, at } of pieces) {
    if (average <= 0) yield { bytes, at };
    for (let offset = 0, step = 0; average > 0 && offset < bytes.length; step++) {
      const size = Math.max(1, Math.round(average + variation * (2 * random() - 1)));
      yield { bytes: bytes.subarray(offset, offset + size), at: at + (step * Math.max(0, delayUs)) / 1000 };
      offset += size;
    }
  }
}

/** Most bytes a lane holds before the proxy stops reading its source (delays must not mean unbounded memory). */
const LANE_LIMIT = 1024 * 1024;
/** Most pieces a lane delivers in one go before it lets the rest of the proxy run (a slicer makes many). */
const LANE_BURST = 1024;

/** A chunk as it came from the source, with the toxics in force then; cut into pieces only when its turn comes. */
interface Arrival {
  bytes: Uint8Array;
  at: number;
  toxics: readonly Toxic[];
}

/**
 * One direction of one connection, when toxics are about: chunks go through each toxic in turn, which may delay,
 * pace, slice, truncate or stall them, and wait here until their time comes. Order is always kept. Chunks are
 * held as they came and cut into pieces one piece at a time, so the memory a lane holds is its bytes (at most
 * LANE_LIMIT, plus one read), never a million one-byte pieces; and a piece waits here, not in the destination's
 * queue, until the destination has taken the one before it.
 */
class Lane {
  private readonly arrivals: Arrival[] = [];
  /** The arrival being delivered, its pieces made one at a time, and how many of its bytes have gone. */
  private current: Arrival | undefined;
  private pieces: Iterator<Piece> | undefined;
  private sent = 0;
  /** The next piece to deliver, waiting for its time; undefined when the lane is empty. */
  private next: Piece | undefined;
  /** Bytes held, in arrivals, in the one being cut and in `next`: what LANE_LIMIT bounds. */
  heldBytes = 0;
  private lastAt = -Infinity;
  /** Bandwidth toxics, by name: when the bytes sent so far will have gone through at the allowed rate. */
  private readonly paces = new Map<string, { at: number }>();
  /** limit_data toxic: bytes let through so far, and whether the limit has been reached. */
  private passed = 0;
  cut = false;
  stalled = false;
  /** The destination did not take the last piece whole: nothing more until it has (unblock). */
  blocked = false;
  private timer: unknown;

  constructor(
    /** Writes a piece on; false when the destination did not take it all (it is queued there). */
    private readonly deliver: (bytes: Uint8Array) => boolean,
    private readonly progressed: () => void,
    private readonly clock: Clock = REAL_CLOCK,
    private readonly random: () => number = () => chance(),
  ) {}

  get empty(): boolean {
    return this.next === undefined;
  }

  push(chunk: Uint8Array, toxics: readonly Toxic[]): void {
    const bytes = this.limit(chunk, toxics);
    if (bytes.length === 0) return void (this.cut && this.empty && this.progressed()); // limit_data reached
    this.arrivals.push({ bytes, at: this.clock.now(), toxics });
    this.heldBytes += bytes.length;
    if (this.next !== undefined) return; // it waits its turn behind what is already held
    this.advance();
    this.schedule();
  }

  /** limit_data counts bytes as they come: what is past the limit is dropped before it is held. */
  private limit(chunk: Uint8Array, toxics: readonly Toxic[]): Uint8Array {
    let room = Infinity;
    for (const toxic of toxics) {
      if (toxic.type === "limit_data") room = Math.min(room, Math.max(0, toxic.attributes.bytes!) - this.passed);
    }
    if (room === Infinity) return chunk;
    const kept = chunk.subarray(0, Math.max(0, room));
    this.passed += kept.length;
    if (kept.length >= room) this.cut = true;
    return kept;
  }

  /** Makes the next piece: from the arrival being cut, or from the next arrival. */
  private advance(): void {
    while (this.next === undefined) {
      const result = this.pieces?.next();
      if (result !== undefined && !result.done) {
        const piece = result.value;
        piece.at = Math.max(piece.at, this.lastAt); // a later piece never overtakes an earlier one
        this.lastAt = piece.at;
        this.next = piece;
        return;
      }
      const arrival = this.arrivals.shift();
      [this.current, this.sent] = [arrival, 0];
      this.pieces = arrival && this.cutUp(arrival)[Symbol.iterator]();
      if (arrival === undefined) return;
    }
  }

  private cutUp({ bytes, at, toxics }: Arrival): Iterable<Piece> {
    let pieces: Iterable<Piece> = [{ bytes, at }];
    for (const { type, name, attributes: a } of toxics) {
      if (type === "latency") pieces = delayed(pieces, a.latency!, a.jitter!, this.random);
      if (type === "slicer") pieces = sliced(pieces, a.average_size!, a.size_variation!, a.delay!, this.random);
      if (type === "bandwidth") {
        const pace = this.paces.get(name) ?? { at: -Infinity };
        this.paces.set(name, pace);
        pieces = paced(pieces, a.rate!, pace);
      }
      // limit_data acted as the bytes came; timeout, reset_peer and slow_close are about sockets, not bytes.
    }
    return pieces;
  }

  /** Stalls or lets go again. */
  setStalled(stalled: boolean): void {
    this.stalled = stalled;
    this.schedule();
  }

  /**
   * The toxics changed: what is held goes on under the new ones at once, timed from when it came (a latency
   * removed lets its bytes go now; toxiproxy flushes them onward too). limit_data's count is kept.
   */
  retime(toxics: readonly Toxic[]): void {
    if (this.current && this.next)
      this.arrivals.unshift({ ...this.current, bytes: this.current.bytes.subarray(this.sent) });
    for (const arrival of this.arrivals) arrival.toxics = toxics;
    this.current = this.pieces = this.next = undefined;
    this.lastAt = -Infinity;
    this.advance();
    this.schedule();
  }

  /** The destination has taken everything queued for it: deliver what is due. */
  unblock(): void {
    this.blocked = false;
    this.release();
  }

  private schedule(): void {
    this.clock.clearTimer(this.timer);
    this.timer = undefined;
    if (this.next === undefined || this.stalled || this.blocked) return;
    // Never more than a JS timer can wait: a longer wait (delays that add up) sleeps again when the timer fires.
    const wait = Math.min(Math.max(0, this.next.at - this.clock.now()), MAX_ATTRIBUTE);
    this.timer = this.clock.setTimer(() => this.release(), wait);
  }

  private release(): void {
    const now = this.clock.now();
    for (let burst = 0; burst < LANE_BURST && !this.stalled && !this.blocked; burst++) {
      const piece = this.next;
      if (piece === undefined || piece.at > now + 0.5) break;
      this.next = undefined;
      this.heldBytes -= piece.bytes.length;
      this.sent += piece.bytes.length;
      this.advance();
      if (!this.deliver(piece.bytes)) this.blocked = true;
    }
    this.schedule();
    this.progressed();
  }

  stop(): void {
    this.clock.clearTimer(this.timer);
    this.arrivals.length = 0;
    this.current = this.pieces = this.next = undefined;
    this.heldBytes = 0;
    this.blocked = false;
  }
}

// ---- The HTTP API: errors, bodies, methods, and a server that never answers a bad request with a 5xx ---------

/** The toxiproxy release whose API this stage answers as (GET /version): the one its clients expect. */
const TOXIPROXY_VERSION = "2.12.0";

/**
 * A request the API refuses: its HTTP status and the reason, sent as {"error": ..., "status": ...}. A path or a
 * method no route knows is answered as toxiproxy's router answers it instead: 404 "404 page not found", 405 empty.
 */
class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly kind: "api" | "route" = "api",
  ) {
    super(message);
  }
}

/**
 * A JSON object's value for `key` as Go's encoding/json finds it: the key itself, or else one that differs only
 * in case (toxiproxy's users send {"Type": ...}, toxiproxy issue #119); null counts as not given.
 */
function field(object: Record<string, unknown>, key: string): unknown {
  if (key in object) return object[key] ?? undefined;
  const wanted = key.toLowerCase();
  const found = Object.keys(object).find((name) => name.toLowerCase() === wanted);
  return found === undefined ? undefined : (object[found] ?? undefined);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** A request's JSON body (any Content-Type, as toxiproxy reads it): an object, or with `list`, an array. */
async function readBody(request: Request): Promise<Record<string, unknown>>;
async function readBody(request: Request, list: "list"): Promise<unknown[]>;
async function readBody(request: Request, list?: "list"): Promise<Record<string, unknown> | unknown[]> {
  const text = await request.text();
  if (text.trim() === "") throw new ApiError(400, "bad request body: EOF"); // Go's words for an empty body
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (error) {
    throw new ApiError(400, `bad request body: ${(error as Error).message}`);
  }
  if (list) {
    if (!Array.isArray(body)) throw new ApiError(400, "bad request body: not a JSON array");
    return body;
  }
  if (body === null) return {}; // as Go decodes null into a struct: nothing given
  if (!isObject(body)) throw new ApiError(400, "bad request body: not a JSON object");
  return body;
}

/** A 405 (empty, as toxiproxy's router answers it) unless the request's method is one of `methods`. */
function allow(request: Request, path: string, ...methods: string[]): void {
  if (!methods.includes(request.method)) throw new ApiError(405, `${request.method} not allowed on ${path}`, "route");
}

/**
 * An HTTP server for a JSON API: `route` answers, or throws an ApiError (or a ToxicError: 400) that becomes
 * {"error": ..., "status": ...}. A bad request is never a 5xx nor Bun's error page, and a browser gets 403.
 */
function serveHttpApi(
  address: Address,
  log: Logger,
  route: (request: Request, path: string) => Promise<Response>,
): ReturnType<typeof Bun.serve> {
  // toxiproxy's error body, newline included; as JSON (toxiproxy labels it text/plain, which no client reads).
  const fail = (status: number, error: string): Response =>
    new Response(`${JSON.stringify({ error, status })}\n`, { status, headers: { "content-type": "application/json" } });
  const text = { "content-type": "text/plain; charset=utf-8", "x-content-type-options": "nosniff" };
  return Bun.serve({
    hostname: address.host,
    port: address.port,
    development: false, // never Bun's development error page: it shows source
    reusePort: false, // development: false turns SO_REUSEPORT on: a second process would share the port
    maxRequestBodySize: 64 * 1024,
    // A request that still makes a handler throw (a bug here) gets a JSON 500 and a log line, never a stack.
    error: (error) => {
      log.error(`API: ${error.message}`);
      return fail(500, "internal error");
    },
    fetch: async (request) => {
      // As toxiproxy does: a web page must not drive the proxy (any site can make a browser POST to localhost).
      if (request.headers.get("user-agent")?.startsWith("Mozilla/")) {
        const headers = { "content-type": "text/plain; charset=utf-8" };
        return new Response("User agent not allowed\n", { status: 403, headers });
      }
      const path = new URL(request.url).pathname;
      try {
        return await route(request, path);
      } catch (error) {
        if (error instanceof ApiError && error.kind === "route") {
          if (error.status === 405) return new Response(null, { status: 405 });
          return new Response("404 page not found\n", { status: 404, headers: text });
        }
        if (error instanceof ApiError) return fail(error.status, error.message);
        if (error instanceof ToxicError) return fail(400, error.message);
        if (error instanceof URIError) return fail(400, `bad percent-encoding in ${path}`);
        throw error;
      }
    },
  });
}

// ---- Metrics ---------------------------------------------------------------------------------------------------

/** Counters and gauges in the Prometheus text format, for --metrics-port. */
class Metrics {
  accepted = 0;
  readonly refused = new Map<string, number>();
  readonly bytes: Record<Side, number> = { client: 0, upstream: 0 };
  readonly upstreamConnects = new Map<string, number>();
  readonly upstreamFailures = new Map<string, number>();
  private static readonly BUCKETS = [0.01, 0.1, 1, 10, 60, 600];
  private readonly durationBuckets = new Array<number>(Metrics.BUCKETS.length).fill(0);
  private durationSum = 0;
  private durationCount = 0;

  count(map: Map<string, number>, key: string): void {
    map.set(key, (map.get(key) ?? 0) + 1);
  }

  observeDuration(seconds: number): void {
    this.durationSum += seconds;
    this.durationCount++;
    Metrics.BUCKETS.forEach((bound, i) => {
      if (seconds <= bound) this.durationBuckets[i]!++;
    });
  }

  render(active: number, upstreams: readonly Upstream[]): string {
    const lines: string[] = [];
    const metric = (name: string, type: string, help: string, samples: [labels: string, value: number][]): void => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [labels, value] of samples) lines.push(`${name}${labels} ${value}`);
    };
    const byUpstream = (value: (upstream: Upstream) => number): [string, number][] =>
      upstreams.map((upstream) => [`{upstream="${upstream.name}"}`, value(upstream)]);
    metric("proxy_connections_accepted_total", "counter", "Client connections accepted.", [["", this.accepted]]);
    metric(
      "proxy_connections_refused_total",
      "counter",
      "Client connections closed at once, by reason.",
      [...this.refused].map(([reason, value]) => [`{reason="${reason}"}`, value]),
    );
    metric("proxy_connections_active", "gauge", "Client connections being served now.", [["", active]]);
    metric("proxy_bytes_total", "counter", "Bytes forwarded: up = client to upstream, down = upstream to client.", [
      ['{direction="up"}', this.bytes.client],
      ['{direction="down"}', this.bytes.upstream],
    ]);
    const buckets: [string, number][] = Metrics.BUCKETS.map((bound, i) => [
      `{le="${bound}"}`,
      this.durationBuckets[i]!,
    ]);
    lines.push("# HELP proxy_connection_duration_seconds How long client connections lasted.");
    lines.push("# TYPE proxy_connection_duration_seconds histogram");
    for (const [labels, value] of [...buckets, ['{le="+Inf"}', this.durationCount] as [string, number]]) {
      lines.push(`proxy_connection_duration_seconds_bucket${labels} ${value}`);
    }
    lines.push(`proxy_connection_duration_seconds_sum ${this.durationSum}`);
    lines.push(`proxy_connection_duration_seconds_count ${this.durationCount}`);
    metric(
      "proxy_upstream_up",
      "gauge",
      "1 if the upstream takes new connections (health checks and failures).",
      byUpstream((upstream) => (upstream.available ? 1 : 0)),
    );
    metric(
      "proxy_upstream_connections_active",
      "gauge",
      "Connections on each upstream now, connecting ones too.",
      byUpstream((upstream) => upstream.active),
    );
    metric(
      "proxy_upstream_connects_total",
      "counter",
      "Connections opened to each upstream.",
      byUpstream((upstream) => this.upstreamConnects.get(upstream.name) ?? 0),
    );
    metric(
      "proxy_upstream_connect_failures_total",
      "counter",
      "Failed connects to each upstream.",
      byUpstream((upstream) => this.upstreamFailures.get(upstream.name) ?? 0),
    );
    return `${lines.join("\n")}\n`;
  }
}

/**
 * One proxy's counters for /metrics: toxiproxy's two byte counters, kept up to date as bytes flow (toxiproxy adds
 * them when a connection ends), its connections, and what each of its toxics did.
 */
class ProxyCounters {
  /** Bytes read from the source of each direction, and written to its destination. */
  readonly received: Record<Stream, number> = { upstream: 0, downstream: 0 };
  readonly sent: Record<Stream, number> = { upstream: 0, downstream: 0 };
  accepted = 0;
  /** By toxic name, until it is removed: connections it applied to, bytes it dropped, connections it ended. */
  readonly toxics = new Map<string, { applied: number; dropped: number; ended: number }>();

  toxic(name: string): { applied: number; dropped: number; ended: number } {
    let counts = this.toxics.get(name);
    if (counts === undefined) this.toxics.set(name, (counts = { applied: 0, dropped: 0, ended: 0 }));
    return counts;
  }
}

/** The direction of the bytes that `from` sends. */
const streamFrom = (from: Side): Stream => (from === "client" ? "upstream" : "downstream");

let nextConnectionId = 1;

interface Timeouts {
  /** Milliseconds to wait for the upstream connection to open. */
  connectMs: number;
  /** Milliseconds without a byte in either direction before the connection is closed; 0 = never. */
  idleMs: number;
}

interface Faults {
  toxics: Toxic[];
  /** Address of the HTTP control API for toxics; undefined = none (the --toxic flags stay as they are). */
  api: Address | undefined;
}

interface Edges {
  /** Port for Prometheus metrics over HTTP on --metrics-host; undefined = no metrics endpoint. */
  metrics: Address | undefined;
  /** Send a PROXY header of this version to the upstream first; 0 = none. */
  sendProxy: 0 | 1 | 2;
  /** Expect a PROXY header (v1 or v2) from every client before anything else. */
  acceptProxy: boolean;
  allow: Cidr[];
  deny: Cidr[];
}

interface Limits {
  /** Clients served at once; more are closed as soon as they connect. */
  maxClients: number;
  /** Clients served at once from one IP address; 0 = no limit. */
  maxPerIp: number;
  /** Milliseconds a shutdown waits for open connections to finish before closing them. */
  drainMs: number;
}

const other = (side: Side): Side => (side === "client" ? "upstream" : "client");

/** Who ended a connection, for its log line: one of its two peers, or the proxy itself. */
type Closer = Side | "proxy";

/** One client, its upstream connection, and a queue for each direction. */
class Connection {
  readonly id = nextConnectionId++;
  readonly client: Socket<Link>;
  upstream: Socket<Link> | undefined;
  readonly toUpstream = new Queue();
  readonly toClient = new Queue();
  /** For the logs: `#id client-address:port` (read once: a closed socket no longer knows its peer). */
  readonly name: string;
  readonly clientAddress: string;
  /** Who the client really is and which address it reached: from its socket, or from its PROXY header. */
  source: Endpoint | undefined;
  destination: Endpoint | undefined;
  /** With --accept-proxy: the header's bytes so far, until it is complete. */
  headerBytes: Uint8Array | undefined;
  private fromHeader = false;
  private headerTimer: Timer | undefined;
  closed = false;
  /** Set once one side has closed: the other is closed as soon as what is queued for it has been written. */
  private closing = false;
  /** FIN received from that side: it will send nothing more, but may still be reading. */
  private readonly ended: Record<Side, boolean> = { client: false, upstream: false };
  /** FIN passed on to that side, once everything queued for it had been written. */
  private readonly finSent: Record<Side, boolean> = { client: false, upstream: false };
  /** That side has closed while a toxic still held bytes it had sent: they go first, then the close goes on. */
  private readonly left: Record<Side, boolean> = { client: false, upstream: false };
  private idleTimer: Timer | undefined;
  private lastActivity = performance.now();
  // What the connection's log line reports.
  private readonly startedAt = performance.now();
  private connectedAt: number | undefined;
  /** Bytes written to each side (taken by the kernel): what was delivered, not what was read or held. */
  private readonly delivered: Record<Side, number> = { client: 0, upstream: 0 };
  /** Bytes of the PROXY header still in the upstream queue: sent, but not the client's bytes. */
  private preambleLeft = 0;
  private firstFin: Side | undefined;
  private closedBy: Closer = "proxy";
  private reason = "";
  /** Sockets still open; at zero the connection is over and `onReleased` runs. */
  private openSockets = 1;
  /** Where each side's bytes wait while toxics delay, pace or stall them. */
  private readonly lanes: Record<Side, Lane>;
  /** The toxics acting on the bytes each side sends, chosen again on every change. */
  private readonly toxicsFrom: Record<Side, readonly Toxic[]> = { client: NO_TOXICS, upstream: NO_TOXICS };
  /** Whether each toxic applies to this connection, drawn once per toxic (a changed toxic is a new one). */
  private readonly toxicChoices = new Map<Toxic, boolean>();
  /** The timers of timeout toxics, by toxic: cancelled when their toxic goes. */
  private readonly toxicTimers = new Map<Toxic, Timer>();
  /** A timeout toxic on that side's direction: what it sends is read and dropped. */
  private readonly dropping: Record<Side, Toxic | undefined> = { client: undefined, upstream: undefined };
  /** A reset_peer toxic waiting for that side's first data; once it comes the connection is doomed. */
  private readonly resetArmed: Record<Side, Toxic | undefined> = { client: undefined, upstream: undefined };
  private resetTimer: Timer | undefined;
  /** slow_close: that side's end of stream is being held back. */
  private readonly slowClosing: Record<Side, boolean> = { client: false, upstream: false };
  private readonly slowCloseTimers: Timer[] = [];

  constructor(
    client: Socket<Link>,
    private readonly log: Logger,
    private readonly timeouts: Timeouts,
    private readonly metrics: Metrics,
    private readonly toxics: ToxicSet,
    private readonly counters: ProxyCounters,
    private readonly onReleased: (connection: Connection) => void,
  ) {
    this.client = client;
    this.lanes = {
      client: new Lane(
        (bytes) => this.deliver("client", bytes),
        () => this.laneProgressed("client"),
      ),
      upstream: new Lane(
        (bytes) => this.deliver("upstream", bytes),
        () => this.laneProgressed("upstream"),
      ),
    };
    this.clientAddress = client.remoteAddress;
    this.name = `#${this.id} ${formatAddress(client.remoteAddress, client.remotePort)}`;
    const [remote, local] = [parseIp(client.remoteAddress), parseIp(client.localAddress)];
    if (remote) this.source = { ip: remote, port: client.remotePort };
    if (local) this.destination = { ip: local, port: client.localPort };
  }

  /** --accept-proxy: nothing is forwarded until the PROXY header has arrived, and it must arrive in time. */
  awaitHeader(timeoutMs: number): void {
    this.headerBytes = new Uint8Array(0);
    this.headerTimer = setTimeout(() => {
      this.close("proxy", `bad PROXY header: none within ${seconds(timeoutMs)}`, "warn");
    }, timeoutMs);
  }

  headerDone(source: Endpoint | undefined, destination: Endpoint | undefined): void {
    clearTimeout(this.headerTimer);
    this.headerBytes = undefined;
    if (source && destination) [this.source, this.destination, this.fromHeader] = [source, destination, true];
  }

  /** The upstream being tried, then used; "-" until the first try. */
  target = "-";
  /** Upstreams tried so far, the one in use last. */
  readonly tried: Upstream[] = [];

  /** Starts the idle timer, once the proxy has decided to serve this client (connect timers are per try). */
  startTimers(): void {
    // Timers, not socket.timeout(): Bun checks that one on a coarse sweep and traffic does not reset it.
    if (this.timeouts.idleMs > 0) this.armIdleTimer(this.timeouts.idleMs);
    this.refreshToxics();
  }

  private applies(toxic: Toxic): boolean {
    let choice = this.toxicChoices.get(toxic);
    if (choice === undefined) {
      this.toxicChoices.set(toxic, (choice = chance() < toxic.toxicity));
      if (choice) this.counters.toxic(toxic.name).applied++;
    }
    return choice;
  }

  /**
   * Chooses the toxics that act on this connection (toxicity: drawn once per toxic, and again only for a toxic
   * that is changed) and applies those about sockets rather than bytes, as toxiproxy does: timeout drops the data
   * and closes after its timeout (removed, it closes the connection: bytes were lost), reset_peer waits for the
   * first data. Runs at the start and on every change, which reaches open connections at once: what a lane holds
   * goes on under the new toxics.
   */
  refreshToxics(): void {
    if (this.closed) return;
    for (const side of ["client", "upstream"] as const) {
      const before = this.toxicsFrom[side];
      const chosen = this.toxics.list.filter((toxic) => direction(toxic) === streamFrom(side) && this.applies(toxic));
      this.toxicsFrom[side] = chosen.length > 0 ? chosen : NO_TOXICS;
      if (before.length !== chosen.length || before.some((toxic, i) => toxic !== chosen[i])) {
        this.lanes[side].retime(this.toxicsFrom[side]);
      }
      const dropping = this.dropping[side];
      this.dropping[side] = chosen.find((toxic) => toxic.type === "timeout");
      if (dropping && this.toxics.get(dropping.name) === undefined) {
        return this.close("proxy", `toxic ${dropping.name} removed: bytes were dropped`);
      }
      if (this.dropping[side] && !dropping) this.lanes[side].stop(); // what it held is dropped too
      if (!this.resetTimer) this.resetArmed[side] = chosen.find((toxic) => toxic.type === "reset_peer");
    }
    const timed = new Set([this.dropping.client, this.dropping.upstream].filter((toxic) => toxic !== undefined));
    for (const [toxic, timer] of this.toxicTimers) {
      if (timed.has(toxic)) continue;
      clearTimeout(timer); // removed or changed before its time: it never fires
      this.toxicTimers.delete(toxic);
    }
    for (const toxic of timed) if (!this.toxicTimers.has(toxic)) this.armTimeout(toxic);
  }

  /** A timeout toxic's timer: toxiproxy starts it again whenever data comes, so it measures a silence. */
  private armTimeout(toxic: Toxic): void {
    clearTimeout(this.toxicTimers.get(toxic));
    if (toxic.attributes.timeout! <= 0) return; // 0: never closes, the data is dropped until the toxic goes
    this.toxicTimers.set(
      toxic,
      setTimeout(() => this.toxicTimeUp(toxic), toxic.attributes.timeout),
    );
  }

  /** reset_peer, at the first data (or end) from `from`: that chunk is dropped, nothing more is read, and RST. */
  private resetSoon(from: Side, toxic: Toxic, chunk?: Uint8Array): void {
    this.resetArmed.client = this.resetArmed.upstream = undefined;
    if (chunk) this.counters.toxic(toxic.name).dropped += chunk.length;
    this.socket(from)?.pause();
    this.resetTimer = setTimeout(() => this.toxicTimeUp(toxic), Math.max(0, toxic.attributes.timeout!));
  }

  /** slow_close: the end of the stream from `side` (FIN or close) is held `delay` ms before it goes on. */
  private holdEnd(side: Side): void {
    const slow = this.toxicsFrom[side].find((toxic) => toxic.type === "slow_close");
    if (slow === undefined || slow.attributes.delay! <= 0 || this.slowClosing[side]) return;
    this.slowClosing[side] = true;
    const timer = setTimeout(() => {
      this.slowClosing[side] = false;
      this.laneProgressed(side);
    }, slow.attributes.delay);
    this.slowCloseTimers.push(timer);
  }

  /** Is something from `side` still held: bytes in its lane, or its end of stream (slow_close)? */
  private holding(side: Side): boolean {
    return !this.lanes[side].empty || this.slowClosing[side];
  }

  /** May `from` be read from? Not while bytes wait for its peer, nor while its lane is stalled or full. */
  private mayRead(from: Side): boolean {
    const lane = this.lanes[from];
    return this.queueTo(other(from)).empty && !lane.stalled && lane.heldBytes <= LANE_LIMIT;
  }

  /**
   * Bytes from `from` were delivered (by its lane, or its destination drained): once nothing from it is held, pass
   * its FIN or its close on, or close the connection when limit_data was reached; otherwise read it again.
   */
  private laneProgressed(from: Side): void {
    if (this.closed) return;
    const lane = this.lanes[from];
    if (lane.cut && lane.empty) return this.cutOff(other(from), `toxic limit_data`);
    if (!this.holding(from) && this.left[from]) return this.sideGone(from);
    if (!this.holding(from) && this.ended[from]) {
      if (this.socket(other(from)) !== undefined && this.queueTo(other(from)).empty) this.forwardFin(other(from));
    } else if (this.mayRead(from)) {
      this.socket(from)?.resume();
    }
  }

  private socket(side: Side): Socket<Link> | undefined {
    return side === "client" ? this.client : this.upstream;
  }

  /** The queue of bytes on their way to `side`. */
  private queueTo(side: Side): Queue {
    return side === "client" ? this.toClient : this.toUpstream;
  }

  // Re-arming one timer per chunk would cost more than the bytes: note the time of the last byte instead, and when
  // the timer fires, sleep again for whatever is left of the idle period.
  private armIdleTimer(delayMs: number): void {
    this.idleTimer = setTimeout(() => {
      const idleFor = performance.now() - this.lastActivity;
      if (idleFor >= this.timeouts.idleMs) this.close("proxy", `idle-timeout ${seconds(this.timeouts.idleMs)}`);
      else this.armIdleTimer(this.timeouts.idleMs - idleFor);
    }, delayMs);
  }

  /** The upstream connection is open: deliver what the client said meanwhile, then let it speak again. */
  upstreamOpened(upstream: Socket<Link>, preamble?: Uint8Array): void {
    if (this.closed) return void upstream.end(); // the client left (or we gave up) while we were connecting
    this.upstream = upstream;
    if (preamble) this.toUpstream.pushFront(preamble); // the PROXY header: first, before any byte of the client
    this.preambleLeft = preamble?.length ?? 0;
    this.openSockets++;
    this.connectedAt = performance.now();
    this.log.debug(`${this.name} upstream connected from local port ${upstream.localPort}`);
    if (!this.toUpstream.empty) this.log.debug(`${this.name} delivering ${this.toUpstream.bytes} early bytes`);
    this.flush("upstream");
  }

  /** Bytes arrived on `from`: pass them to the other side, or queue them and stop reading `from` for now. */
  forward(from: Side, chunk: Uint8Array): void {
    if (this.closed) return; // the other side has closed: nothing can reach it any more
    // The clock only when the idle timer will read it: with --idle-timeout 0, a clock read per chunk is wasted.
    if (this.timeouts.idleMs > 0) this.lastActivity = performance.now();
    this.counters.received[streamFrom(from)] += chunk.length;
    const lane = this.lanes[from];
    const toxics = this.toxicsFrom[from];
    // No toxic on this side, nothing held, no reset coming: straight on, the common case first.
    if (toxics.length === 0 && lane.empty && !lane.stalled && !this.resetTimer) return void this.deliver(from, chunk);
    const dropping = this.dropping[from];
    if (dropping) {
      this.counters.toxic(dropping.name).dropped += chunk.length;
      return this.armTimeout(dropping); // timeout: read and dropped, and its silence starts again
    }
    const reset = this.resetArmed[from];
    if (reset) return this.resetSoon(from, reset, chunk);
    if (this.resetTimer) return; // a reset is coming: nothing more goes through
    if (lane.cut) return; // limit_data reached: the rest is dropped, the connection is closing
    lane.push(chunk, toxics);
    if (!this.mayRead(from)) this.socket(from)?.pause();
  }

  /**
   * Bytes from `from` whose time has come: write them to the other side, or queue them and pause `from`. True
   * when the other side took them all (or is gone, and they have nowhere to go); a lane waits on false.
   */
  private deliver(from: Side, chunk: Uint8Array): boolean {
    const queue = this.queueTo(other(from));
    const source = this.socket(from)!;
    const destination = this.socket(other(from));
    if (destination === undefined) {
      // The upstream is not connected yet: keep the bytes, in order, but only so many.
      queue.push(chunk);
      if (queue.bytes >= EARLY_BYTES_LIMIT) source.pause();
      return false;
    }
    if (queue.empty) {
      const written = destination.write(chunk);
      if (written < 0) return true; // closed: `close` will tidy up
      this.countDelivered(other(from), written);
      if (written === chunk.length) return true;
      queue.push(chunk.subarray(written));
    } else {
      queue.push(chunk); // older bytes are still waiting: these go after them
    }
    this.log.debug(`${this.name} ${other(from)} is slow, ${queue.bytes} bytes queued`);
    source.pause(); // backpressure: read no more from this side until the other has taken the queue
    return false;
  }

  /** Counts bytes the kernel took for `to`, for the log line and the metrics (a PROXY header is not counted). */
  private countDelivered(to: Side, bytes: number): void {
    if (to === "upstream" && this.preambleLeft > 0) {
      const header = Math.min(bytes, this.preambleLeft);
      this.preambleLeft -= header;
      bytes -= header;
    }
    this.delivered[to] += bytes;
    this.metrics.bytes[other(to)] += bytes;
    this.counters.sent[streamFrom(other(to))] += bytes;
  }

  /**
   * `to` can take bytes again (`drain`, or the upstream just opened): write its queue, then read its peer again,
   * or, if the peer has finished sending, pass its FIN on now that nothing is left in front of it.
   */
  flush(to: Side): void {
    const socket = this.socket(to);
    if (socket === undefined) return;
    const queue = this.queueTo(to);
    const before = queue.bytes;
    const flushed = queue.flushTo(socket);
    this.countDelivered(to, before - queue.bytes);
    if (!flushed) return;
    if (this.closing) return void socket.end();
    // A lane that waited for this drain delivers what is due, then reports its progress itself.
    const lane = this.lanes[other(to)];
    if (lane.blocked) lane.unblock();
    else this.laneProgressed(other(to));
  }

  /** `side` sent FIN: it has finished sending. The other direction goes on until its own FIN. */
  sideEnded(side: Side): void {
    this.ended[side] = true;
    this.firstFin ??= side;
    this.log.debug(`${this.name} ${side} finished sending (FIN)`);
    const reset = this.resetArmed[side];
    if (reset) return this.resetSoon(side, reset); // toxiproxy's reset_peer starts at the end of the stream too
    this.holdEnd(side);
    if (this.socket(other(side)) !== undefined && this.queueTo(other(side)).empty && !this.holding(side)) {
      this.forwardFin(other(side));
    }
  }

  private forwardFin(to: Side): void {
    if (this.finSent[to] || this.closed) return;
    this.finSent[to] = true;
    this.socket(to)!.shutdown(); // FIN, and keep reading what `to` still has to say
    this.log.debug(`${this.name} FIN passed on to ${to}`);
    if (this.finSent.client && this.finSent.upstream) this.close(this.firstFin ?? other(to), "fin");
  }

  /**
   * One side has closed: close the other once what is queued for it is out. Without an error this is a FIN too:
   * when our FIN to a side has already gone, Bun reports that side's own FIN as `close`, not `end`.
   */
  sideClosed(side: Side, error?: Error): void {
    this.socketClosed(side);
    if (this.closed) return;
    if (!error) this.holdEnd(side);
    if (!error && this.holding(side)) {
      // A toxic still holds bytes it sent before closing: they are delivered first, as the network would have
      // delivered them, and laneProgressed() passes the close on once the lane is empty.
      [this.left[side], this.ended[side]] = [true, true];
      this.firstFin ??= side;
      return;
    }
    this.sideGone(side, error);
  }

  /** `side` has closed and nothing it sent is held any more: close the other side once its queue is out. */
  private sideGone(side: Side, error?: Error): void {
    this.closed = true;
    this.clearTimers();
    const finished = !error && this.finSent[side];
    const code = (error as NodeJS.ErrnoException | undefined)?.code;
    this.closedBy = finished ? (this.firstFin ?? side) : side;
    this.reason = error
      ? code === "ECONNRESET"
        ? "reset"
        : `error ${code ?? error.message}`
      : finished
        ? "fin"
        : "closed";
    const peer = this.socket(other(side));
    if (this.queueTo(other(side)).empty) return void peer?.end();
    // What `side` sent last is still queued for the peer: `flush` ends the peer once it has taken it. The peer's
    // answers can go nowhere now, yet a peer may wait for us to read them before it takes the rest (an echo server
    // does): read it again and drop what it says (`forward`), or both would wait forever, holding both sockets and
    // a --max-clients slot. A peer that does not take the rest within --idle-timeout is cut.
    this.closing = true;
    if (peer === undefined) return; // not connected yet: `upstreamOpened` lets it go
    peer.resume();
    if (this.timeouts.idleMs > 0)
      this.idleTimer = setTimeout(() => this.cutLeftover(other(side)), this.timeouts.idleMs);
  }

  private cutLeftover(to: Side): void {
    this.log.warn(`${this.name} ${to} did not take the last ${this.queueTo(to).bytes} bytes in time: cut`);
    this.socket(to)?.terminate();
  }

  private socketClosed(side: Side): void {
    if (side === "upstream" && this.upstream === undefined) return; // one we ended in upstreamOpened: not counted
    if (--this.openSockets === 0) {
      this.clearTimers();
      this.logSummary();
      this.onReleased(this);
    }
  }

  /** Closes both sides now (timeouts, refusals, shutdown, both FINs passed on). */
  close(by: Closer, reason: string, level: "info" | "warn" = "info"): void {
    if (this.closed) return;
    this.closed = true;
    this.clearTimers();
    this.closedBy = by;
    this.reason = reason;
    if (level === "warn") this.log.warn(`${this.name} closing: ${reason}`);
    this.upstream?.end();
    this.client.end();
  }

  /** limit_data: close the source now, and `destination` once what was let through has been written. */
  private cutOff(destination: Side, reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.clearTimers();
    [this.closedBy, this.reason] = ["proxy", reason];
    const limit = this.toxicsFrom[other(destination)].find((toxic) => toxic.type === "limit_data");
    if (limit) this.counters.toxic(limit.name).ended++;
    this.socket(other(destination))?.end();
    if (this.queueTo(destination).empty) this.socket(destination)?.end();
    else this.closing = true;
  }

  /** A timeout toxic's time is up: close; a reset_peer toxic's: reset. */
  private toxicTimeUp(toxic: Toxic): void {
    if (!this.closed) this.counters.toxic(toxic.name).ended++;
    if (toxic.type === "reset_peer") this.reset(`toxic ${toxic.name}`);
    else this.close("proxy", `toxic ${toxic.name}`);
  }

  /** reset_peer: RST both sides, as a crashed peer or a middlebox would. */
  private reset(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.clearTimers();
    [this.closedBy, this.reason] = ["proxy", reason];
    this.upstream?.terminate();
    this.client.terminate();
  }

  private clearTimers(): void {
    clearTimeout(this.idleTimer);
    clearTimeout(this.headerTimer);
    for (const timer of [...this.toxicTimers.values(), ...this.slowCloseTimers]) clearTimeout(timer);
    clearTimeout(this.resetTimer);
    this.lanes.client.stop();
    this.lanes.upstream.stop();
  }

  /**
   * One line per connection once both of its sockets are closed, in the spirit of HAProxy's tcplog: who, to
   * where, how long (and how long the upstream took to accept), bytes each way, who ended it and why.
   */
  private logSummary(): void {
    const now = performance.now();
    const connect = this.connectedAt === undefined ? "-" : `${(this.connectedAt - this.startedAt).toFixed(1)}ms`;
    this.metrics.observeDuration((now - this.startedAt) / 1000);
    // Behind a load balancer (--accept-proxy) the socket's peer is the balancer: say who the client really is.
    const via =
      this.fromHeader && this.source ? `source=${formatAddress(formatIp(this.source.ip), this.source.port)} ` : "";
    this.log.info(
      `${this.name} ${via}-> ${this.target} tries=${this.tried.length} ` +
        `duration=${((now - this.startedAt) / 1000).toFixed(3)}s ` +
        `connect=${connect} bytes_up=${this.delivered.upstream} bytes_down=${this.delivered.client} ` +
        `closed_by=${this.closedBy} reason="${this.reason}"`,
    );
  }
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(ms % 1000 === 0 ? 0 : ms % 100 === 0 ? 1 : 3)}s`;
}

/** One upstream server and what the proxy knows about its health and load. */
class Upstream {
  readonly name: string;
  /** Connections on it now, counting those still connecting (what least-connections compares). */
  active = 0;
  /** Passive health: after a failed connect it is skipped until then (performance.now() milliseconds). */
  skipUntil = 0;
  /** Active health: the verdict of the last `rise` or `fall` checks in a row. */
  up = true;
  private checksInARow = 0;
  private checking = false;

  constructor(readonly address: Address) {
    this.name = formatAddress(address.host, address.port);
  }

  get available(): boolean {
    return this.up && performance.now() >= this.skipUntil;
  }

  /** Counts one check; returns the new state when this check changed it. */
  checked(ok: boolean, rise: number, fall: number): "up" | "down" | undefined {
    if (ok === this.up) return void (this.checksInARow = 0); // confirms the current state
    this.checksInARow++;
    if (this.checksInARow < (ok ? rise : fall)) return undefined;
    this.up = ok;
    this.checksInARow = 0;
    if (ok) this.skipUntil = 0;
    return ok ? "up" : "down";
  }

  /** Runs one TCP connect check; resolves with an error text, or undefined when the upstream accepted. */
  async check(timeoutMs: number): Promise<string | undefined> {
    if (this.checking) return "previous check still running";
    this.checking = true;
    let timer: Timer | undefined;
    try {
      const attempt = Bun.connect({ hostname: this.address.host, port: this.address.port, socket: { data() {} } });
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${seconds(timeoutMs)}`)), timeoutMs);
      });
      attempt.then(
        (socket) => socket.end(),
        () => {},
      ); // whenever it settles: a check never stays open
      await Promise.race([attempt, timeout]);
      return undefined;
    } catch (error) {
      return describeError(error as NodeJS.ErrnoException);
    } finally {
      clearTimeout(timer);
      this.checking = false;
    }
  }
}

const BALANCES = ["roundrobin", "leastconn", "random2"] as const;
type Balance = (typeof BALANCES)[number];

interface PoolConfig {
  balance: Balance;
  /** Further upstreams to try after a failed connect. */
  retries: number;
  /** Milliseconds an upstream is skipped after a failed connect (passive health). */
  failTimeoutMs: number;
  /** Active health checks: a TCP connect every intervalMs (0 = none); `rise` successes in a row bring a down
   *  upstream back, `fall` failures in a row take an up one out. */
  health: { intervalMs: number; rise: number; fall: number };
}

/** The upstreams, how to choose one, and what their health is. */
class Pool {
  private cursor = 0;
  private checks: Timer | undefined;

  constructor(
    readonly upstreams: Upstream[],
    readonly config: PoolConfig,
    private readonly log: Logger,
  ) {}

  /** Picks an available upstream not in `tried`, or undefined when none is left. */
  pick(tried: readonly Upstream[]): Upstream | undefined {
    const candidates = this.upstreams.filter((upstream) => upstream.available && !tried.includes(upstream));
    if (candidates.length <= 1) return candidates[0];
    switch (this.config.balance) {
      case "roundrobin": {
        // The next one after the last pick, in the configured order, skipping the unavailable.
        for (let step = 0; step < this.upstreams.length; step++) {
          const upstream = this.upstreams[(this.cursor + step) % this.upstreams.length]!;
          if (candidates.includes(upstream)) {
            this.cursor = (this.upstreams.indexOf(upstream) + 1) % this.upstreams.length;
            return upstream;
          }
        }
        return candidates[0];
      }
      case "leastconn": {
        // Fewest connections; ties go round-robin so equal upstreams share the load.
        const fewest = Math.min(...candidates.map((upstream) => upstream.active));
        const tied = candidates.filter((upstream) => upstream.active === fewest);
        return tied[this.cursor++ % tied.length];
      }
      case "random2": {
        // Power of two random choices: nearly as even as leastconn, with no herd on the one least-loaded.
        const first = Math.floor(Math.random() * candidates.length);
        const second = (first + 1 + Math.floor(Math.random() * (candidates.length - 1))) % candidates.length;
        const [a, b] = [candidates[first]!, candidates[second]!];
        return b.active < a.active ? b : a;
      }
    }
  }

  /** Passive health: a connect failed, so skip this upstream for a while. */
  failed(upstream: Upstream, reason: string): void {
    upstream.skipUntil = performance.now() + this.config.failTimeoutMs;
    this.log.warn(`upstream ${upstream.name} failed (${reason}), skipped for ${seconds(this.config.failTimeoutMs)}`);
  }

  /** Active health: checks every upstream every interval, and logs each change of state. */
  startChecks(connectMs: number): void {
    const { intervalMs, rise, fall } = this.config.health;
    if (intervalMs === 0 || this.checks) return;
    const timeoutMs = Math.min(intervalMs, connectMs);
    const timer = setInterval(() => {
      for (const upstream of this.upstreams) {
        void upstream.check(timeoutMs).then((error) => {
          if (error === "previous check still running") return;
          const change = upstream.checked(error === undefined, rise, fall);
          if (change === "up") this.log.info(`upstream ${upstream.name} is UP (${rise} good checks in a row)`);
          if (change === "down") this.log.warn(`upstream ${upstream.name} is DOWN (${fall} failed checks: ${error})`);
        });
      }
    }, intervalMs);
    timer.unref(); // checks alone do not keep the process alive
    this.checks = timer;
  }

  /** A proxy disabled, changed or removed stops checking its upstreams. */
  stopChecks(): void {
    clearInterval(this.checks);
    this.checks = undefined;
  }
}

/**
 * The connection a socket belongs to, or undefined before `open` has set `socket.data`. Bun still calls the other
 * handlers for such a socket: after `open` threw, or after it turned away a client that was already gone.
 */
function connectionOf(socket: Socket<Link>): Connection | undefined {
  return (socket.data as Link | undefined)?.connection;
}

/**
 * One proxy: a listener and its upstreams, named. The control plane below creates, changes and removes proxies
 * while the process runs; each has its own toxics and connections, and they all share the command line's settings.
 */
class Proxy {
  readonly name: string;
  host: string;
  port: number;
  /** The listen address as asked for (port 0 included): what /populate compares, as toxiproxy should. */
  requested: string;
  pool: Pool;
  readonly timeouts: Timeouts;
  readonly limits: Limits;
  readonly edges: Edges;
  readonly toxics: ToxicSet;
  readonly counters = new ProxyCounters();
  private listener: TCPSocketListener<Link> | undefined;
  /** The connections being served (refused ones are not counted). */
  private readonly connections = new Set<Connection>();
  private readonly perIp = new Map<string, number>();

  constructor(
    config: ProxyConfig,
    private readonly log: Logger,
    readonly metrics: Metrics,
    /** Called when the last connection has gone (a draining shutdown waits for every proxy's). */
    private readonly onIdle: () => void,
  ) {
    this.name = config.name;
    this.host = config.host;
    this.port = config.port;
    this.requested = formatAddress(config.host, config.port);
    this.timeouts = config.timeouts;
    this.limits = config.limits;
    this.edges = config.edges;
    this.toxics = new ToxicSet(config.toxics);
    this.pool = new Pool(
      config.upstreams.map((address) => new Upstream(address)),
      config.pool,
      this.log,
    );
  }

  get enabled(): boolean {
    return this.listener !== undefined;
  }

  /** Connections being served now. */
  get active(): number {
    return this.connections.size;
  }

  get listen(): string {
    return formatAddress(this.host, this.port);
  }

  /**
   * Binds and starts accepting; returns the port actually bound. The proxy keeps that port: disabled and enabled
   * again, a proxy asked for port 0 comes back on the same address, as toxiproxy's does.
   */
  start(): number {
    const listener = Bun.listen<Link>({
      hostname: this.host,
      port: this.port,
      allowHalfOpen: true, // a client's FIN must not close its socket: the reply may still be on its way
      socket: {
        open: (socket) => this.onClientOpen(socket),
        data: (socket, data) => {
          const connection = connectionOf(socket);
          if (connection === undefined) return;
          if (connection.headerBytes) this.readProxyHeader(connection, data);
          else connection.forward("client", data);
        },
        drain: (socket) => connectionOf(socket)?.flush("client"),
        end: (socket) => connectionOf(socket)?.sideEnded("client"),
        close: (socket, error) => connectionOf(socket)?.sideClosed("client", error),
        error: (socket, error) => this.onHandlerError(socket, error),
      },
    });
    this.listener = listener;
    this.port = listener.port;
    for (const toxic of this.toxics.list) this.log.info(`${this.name}: toxic ${describeToxic(toxic)}`);
    const upstreams = this.pool.upstreams.map((upstream) => upstream.name).join(", ");
    this.pool.startChecks(this.timeouts.connectMs);
    this.log.info(
      `${this.name}: listening on ${this.listen}, forwarding to ${upstreams} ` +
        `(${this.pool.config.balance}, max ${this.limits.maxClients} clients` +
        `${this.limits.maxPerIp > 0 ? `, ${this.limits.maxPerIp} per IP` : ""})`,
    );
    return listener.port;
  }

  /** Stops accepting; open connections carry on (a draining shutdown). */
  drain(): void {
    this.listener?.stop();
    this.listener = undefined;
    this.pool.stopChecks();
  }

  /** Stops accepting and closes every connection: the proxy is disabled, changed or removed (as in toxiproxy). */
  stop(why: string): void {
    if (this.enabled) this.log.info(`${this.name}: ${why}, no longer listening on ${this.listen}`);
    this.drain();
    for (const connection of [...this.connections]) connection.close("proxy", why);
  }

  /** A new listen address and upstream, for a stopped proxy (toxiproxy restarts a proxy whose addresses change). */
  retarget(listen: Address, upstream: Address): void {
    [this.host, this.port, this.requested] = [listen.host, listen.port, formatAddress(listen.host, listen.port)];
    this.pool = new Pool([new Upstream(upstream)], this.pool.config, this.log);
  }

  /** toxiproxy's JSON for a proxy (several --upstream addresses are listed with commas). */
  toJSON(): { name: string; listen: string; upstream: string; enabled: boolean; toxics: Toxic[] } {
    const upstream = this.pool.upstreams.map((one) => one.name).join(",");
    return { name: this.name, listen: this.listen, upstream, enabled: this.enabled, toxics: this.listed() };
  }

  /** The toxics as toxiproxy lists them: the upstream direction's first, each direction in the order added. */
  listed(): Toxic[] {
    const up = this.toxics.list.filter((toxic) => direction(toxic) === "upstream");
    return [...up, ...this.toxics.list.filter((toxic) => direction(toxic) === "downstream")];
  }

  private onClientOpen(client: Socket<Link>): void {
    // A client that resets before the accept completes reaches `open` with no address: it is gone already.
    if (!client.remoteAddress) return void client.terminate();
    const { log, timeouts, metrics, toxics, counters } = this;
    this.counters.accepted++;
    const connection = new Connection(client, log, timeouts, metrics, toxics, counters, (done) => {
      this.release(done);
    });
    client.data = { connection, side: "client" }; // a fresh object: the listen-level `data` is shared by all
    this.metrics.accepted++;
    // Behind a load balancer the real client is only known from its PROXY header: the lists wait for it.
    if (!this.edges.acceptProxy && !this.admitted(connection)) return;
    // Over a limit: close at once, before any upstream connection is made. (Bun cannot stop accepting for a
    // while, so a refused client sees its connection open and close; the alternative, not accepting, would
    // leave it waiting in the kernel's backlog instead.)
    const fromThisIp = this.perIp.get(connection.clientAddress) ?? 0;
    if (this.connections.size >= this.limits.maxClients) {
      return this.refuse(connection, "max-clients", `max-clients ${this.limits.maxClients}`);
    }
    if (this.limits.maxPerIp > 0 && fromThisIp >= this.limits.maxPerIp) {
      return this.refuse(connection, "max-per-ip", `max-per-ip ${this.limits.maxPerIp}`);
    }
    this.connections.add(connection);
    this.perIp.set(connection.clientAddress, fromThisIp + 1);
    this.log.debug(`${connection.name} connected (${this.connections.size} clients)`);
    if (this.edges.acceptProxy) return connection.awaitHeader(this.timeouts.connectMs);
    connection.startTimers();
    this.connectUpstream(connection);
  }

  private refuse(connection: Connection, metric: string, reason: string): void {
    this.metrics.count(this.metrics.refused, metric);
    connection.close("proxy", reason, "warn");
  }

  /** The allow and deny lists, on the real client address. Deny wins; a non-empty allow list admits only its own. */
  private admitted(connection: Connection): boolean {
    const { allow, deny } = this.edges;
    if (allow.length === 0 && deny.length === 0) return true;
    const ip = connection.source?.ip;
    let refusal: string | undefined;
    if (ip === undefined) {
      refusal = "denied: unknown address";
    } else {
      const denied = deny.find((cidr) => cidrContains(cidr, ip));
      if (denied) refusal = `denied ${formatIp(ip)} by ${denied.text}`;
      else if (allow.length > 0 && !allow.some((cidr) => cidrContains(cidr, ip))) {
        refusal = `denied ${formatIp(ip)}: not in the allow list`;
      }
    }
    if (refusal === undefined) return true;
    this.refuse(connection, "denied", refusal);
    return false;
  }

  /**
   * --accept-proxy: collect the client's first bytes until they hold a whole PROXY header. A malformed or
   * missing header closes the connection (a client that could forge its address must not get through); what
   * follows the header is the client's own data, held until the upstream is connected.
   */
  private readProxyHeader(connection: Connection, chunk: Uint8Array): void {
    const bytes = new Uint8Array(connection.headerBytes!.length + chunk.length);
    bytes.set(connection.headerBytes!);
    bytes.set(chunk, connection.headerBytes!.length);
    connection.headerBytes = bytes;
    const header = parseProxyHeader(bytes);
    if (header.status === "incomplete") return;
    if (header.status === "invalid")
      return this.refuse(connection, "proxy-header", `bad PROXY header: ${header.reason}`);
    connection.headerDone(header.source, header.destination);
    if (!this.admitted(connection)) return;
    connection.startTimers();
    this.connectUpstream(connection);
    const rest = bytes.subarray(header.length);
    if (rest.length > 0) connection.forward("client", rest);
  }

  private release(connection: Connection): void {
    if (!this.connections.delete(connection)) return; // a refused one
    const fromThisIp = (this.perIp.get(connection.clientAddress) ?? 1) - 1;
    if (fromThisIp === 0) this.perIp.delete(connection.clientAddress);
    else this.perIp.set(connection.clientAddress, fromThisIp);
    if (this.connections.size === 0) this.onIdle();
  }

  /**
   * A handler threw (Bun passes the exception to `error`). Only that connection pays: it is closed, with a log
   * line, and every other client carries on. Before `open` has set `socket.data` there is no connection yet.
   */
  private onHandlerError(socket: Socket<Link>, error: Error): void {
    const connection = connectionOf(socket);
    this.log.error(`${connection?.name ?? "a client being accepted"}: ${error.message}; closing that connection`);
    if (connection) connection.close("proxy", `${error.message} in a handler`, "warn");
    else socket.terminate();
  }

  /**
   * Connects the client to an upstream picked by the balance rule. A connect that fails (refused, unreachable,
   * no answer within --connect-timeout) marks that upstream as failed for a while and tries the next one, up to
   * --retries more; when no upstream is left, the client is closed at once rather than left waiting.
   */
  private connectUpstream(connection: Connection): void {
    const upstream = this.pool.pick(connection.tried);
    if (upstream === undefined) {
      const why = connection.tried.length === 0 ? "no upstream available" : "no upstream left to try";
      return connection.close("proxy", why, "warn");
    }
    connection.tried.push(upstream);
    connection.target = upstream.name;
    upstream.active++;
    // Each try counts once on its upstream until its connect fails or its socket closes.
    let counted = true;
    const uncount = (): void => {
      if (counted) upstream.active--;
      counted = false;
    };
    let settled = false;
    const fail = (reason: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      uncount();
      this.pool.failed(upstream, reason);
      this.metrics.count(this.metrics.upstreamFailures, upstream.name);
      if (connection.closed) return;
      if (connection.tried.length <= this.pool.config.retries) {
        this.log.debug(`${connection.name} ${upstream.name} failed (${reason}), trying another upstream`);
        return this.connectUpstream(connection);
      }
      connection.close("upstream", `cannot connect to upstream ${upstream.name}: ${reason}`, "warn");
    };
    // A timer per try, not socket.timeout(): Bun checks that one on a coarse sweep.
    const timer = setTimeout(
      () => fail(`connect timed out after ${seconds(this.timeouts.connectMs)}`),
      this.timeouts.connectMs,
    );
    Bun.connect<Link>({
      hostname: upstream.address.host,
      port: upstream.address.port,
      data: { connection, side: "upstream" },
      allowHalfOpen: true,
      socket: {
        open: (socket) => {
          if (settled) return void socket.end(); // this try timed out and another upstream took over
          settled = true;
          clearTimeout(timer);
          this.metrics.count(this.metrics.upstreamConnects, upstream.name);
          const { sendProxy } = this.edges;
          const header = sendProxy ? proxyHeader(sendProxy, connection.source, connection.destination) : undefined;
          connection.upstreamOpened(socket, header);
        },
        data: (_socket, data) => connection.forward("upstream", data),
        drain: () => connection.flush("upstream"),
        end: () => connection.sideEnded("upstream"),
        close: (socket, error) => {
          uncount();
          if (socket === connection.upstream) connection.sideClosed("upstream", error);
        },
        error: (socket, error) => this.onHandlerError(socket, error),
        connectError: () => {}, // the promise rejects too, and is handled below
      },
    }).catch((error: NodeJS.ErrnoException) => fail(describeError(error)));
  }

  /**
   * This proxy's toxic routes, with toxiproxy's JSON shapes and status codes: with no `name`, the list (GET) or a
   * new toxic (POST); with one, that toxic (GET; PATCH or POST to change it; DELETE).
   */
  async handleToxics(request: Request, name: string | undefined): Promise<Response> {
    if (name === undefined) {
      if (request.method === "GET") return Response.json(this.listed());
      const toxic = makeToxic(await readBody(request));
      if (this.toxics.get(toxic.name)) throw new ApiError(409, "toxic already exists");
      this.toxics.set(toxic);
      this.toxicsChanged(`toxic added: ${describeToxic(toxic)}`);
      return Response.json(toxic); // 200, not 201: toxiproxy answers 200, and its Go client checks for exactly that
    }
    const existing = this.toxics.get(name);
    if (existing === undefined) throw new ApiError(404, "toxic not found");
    if (request.method === "GET") return Response.json(existing);
    if (request.method === "DELETE") {
      this.toxics.remove(existing.name);
      this.counters.toxics.delete(existing.name);
      this.toxicsChanged(`toxic removed: ${describeToxic(existing)}`);
      return new Response(null, { status: 204 });
    }
    // A change: toxicity and the attributes named, checked whole before anything changes (toxiproxy applies the
    // attributes before a bad one and then answers 400); name, type and stream stay.
    const toxic = makeToxic(await readBody(request), existing);
    this.toxics.set(toxic);
    this.toxicsChanged(`toxic changed: ${describeToxic(toxic)}`);
    return Response.json(toxic);
  }

  /** The toxics changed: every open connection feels it at once. */
  toxicsChanged(what: string): void {
    this.log.info(`${this.name}: ${what}`);
    for (const connection of this.connections) connection.refreshToxics();
  }
}

/**
 * The control plane: the proxies by name, and an API that creates, changes and removes them while the process
 * runs, with toxiproxy's routes, JSON shapes, status codes and error bodies. The proxy of the command line (if
 * any) is one of them; every proxy shares the command line's settings (timeouts, limits, PROXY protocol, ...).
 */
class ControlPlane {
  readonly proxies = new Map<string, Proxy>();
  /** One set of counters for the whole process: every proxy counts into it. */
  readonly metrics = new Metrics();
  private readonly log: Logger;
  private api: ReturnType<typeof Bun.serve> | undefined;
  private draining = false;

  constructor(private readonly config: ProxyConfig) {
    this.log = new Logger(config.logLevel);
  }

  /** Connections being served now, by every proxy. */
  get active(): number {
    let active = 0;
    for (const proxy of this.proxies.values()) active += proxy.active;
    return active;
  }

  /** The proxy of the command line (--port, --upstream, --toxic ...), listening; returns its port. */
  startCommandLineProxy(): number {
    const proxy = new Proxy(this.config, this.log, this.metrics, () => this.proxyIdle());
    const port = proxy.start();
    this.proxies.set(proxy.name, proxy);
    return port;
  }

  /** Starts `proxy` listening. A port in use is a 409 (toxiproxy: a 500 with these words), any other refusal a 400. */
  private startProxy(proxy: Proxy): void {
    try {
      proxy.start();
    } catch (error) {
      const { code, message } = error as NodeJS.ErrnoException;
      if (code === "EADDRINUSE") throw new ApiError(409, `listen tcp ${proxy.listen}: bind: address already in use`);
      throw new ApiError(400, `listen tcp ${proxy.listen}: ${code ?? message}`);
    }
  }

  /**
   * A proxy from an API body (POST /proxies, /populate, --config), read as toxiproxy reads it: {name, upstream,
   * listen, enabled (default true)}, keys in any case, unknown keys ignored; `place` names a list's item in the
   * errors (" at proxy 2"). A missing listen is 127.0.0.1:0 (toxiproxy binds every interface). Also "toxics", a
   * list of toxics in force before the first connection (toxiproxy has no way to do that: its issues #79, #148).
   * Nothing is started here.
   */
  private parseProxy(body: Record<string, unknown>, place = ""): { proxy: Proxy; enabled: boolean } {
    const [name, upstream, listen = "", enabled = true] = ["name", "upstream", "listen", "enabled"].map((key) =>
      field(body, key),
    );
    const toxics = field(body, "toxics") ?? [];
    if (typeof name !== "string" || name === "") throw new ApiError(400, `missing required field: name${place}`);
    if (typeof upstream !== "string" || upstream === "") {
      throw new ApiError(400, `missing required field: upstream${place}`);
    }
    if (typeof listen !== "string") throw new ApiError(400, `bad request body: listen must be a string${place}`);
    if (typeof enabled !== "boolean") throw new ApiError(400, `bad request body: enabled must be a boolean${place}`);
    if (!Array.isArray(toxics) || !toxics.every(isObject)) {
      throw new ApiError(400, `bad request body: toxics must be a list of toxics${place}`);
    }
    const address = parseListen(listen || "127.0.0.1:0");
    const made = toxics.map((toxic) => makeToxic(toxic));
    const names = made.map((toxic) => toxic.name);
    if (names.some((one, i) => names.indexOf(one) !== i)) throw new ApiError(409, "toxic already exists");
    const config = { ...this.config, name, host: address.host, port: address.port, toxics: made };
    const proxy = new Proxy({ ...config, upstreams: [parseUpstream(upstream)] }, this.log, this.metrics, () => {
      this.proxyIdle();
    });
    return { proxy, enabled: enabled as boolean };
  }

  /** POST /proxies: 409 if the name is taken (before anything listens), else created and listening (201). */
  private create(body: Record<string, unknown>): Proxy {
    const { proxy, enabled } = this.parseProxy(body);
    if (this.proxies.has(proxy.name)) throw new ApiError(409, "proxy already exists");
    if (enabled) this.startProxy(proxy);
    this.proxies.set(proxy.name, proxy);
    return proxy;
  }

  /**
   * PATCH (or POST) /proxies/NAME: a new listen address or upstream restarts the proxy (its connections are
   * closed, as toxiproxy does); the same address again changes nothing; enabled false takes it down, true brings
   * it back on the same address. Checked whole before anything changes.
   */
  private update(proxy: Proxy, body: Record<string, unknown>): void {
    const [listen, upstream, enabled = proxy.enabled] = ["listen", "upstream", "enabled"].map((key) =>
      field(body, key),
    );
    if (listen !== undefined && typeof listen !== "string")
      throw new ApiError(400, "bad request body: listen must be a string");
    if (upstream !== undefined && typeof upstream !== "string") {
      throw new ApiError(400, "bad request body: upstream must be a string");
    }
    if (typeof enabled !== "boolean") throw new ApiError(400, "bad request body: enabled must be a boolean");
    const address =
      listen === undefined || listen === "" ? { host: proxy.host, port: proxy.port } : parseListen(listen);
    const target = upstream === undefined || upstream === "" ? undefined : parseUpstream(upstream);
    const moved = address.host !== proxy.host || address.port !== proxy.port;
    if (moved || (target && formatAddress(target.host, target.port) !== proxy.toJSON().upstream)) {
      proxy.stop("proxy changed");
      proxy.retarget(address, target ?? proxy.pool.upstreams[0]!.address);
    }
    if (enabled && !proxy.enabled) this.startProxy(proxy);
    if (!enabled && proxy.enabled) proxy.stop("proxy disabled");
  }

  /**
   * POST /populate and --config, toxiproxy's rules: every item is checked before any is touched; then a new name
   * is created, an existing proxy asked for the same listen and upstream is left as it is (toxics, connections,
   * enabled state), and one that differs is replaced. The first that cannot listen stops the rest: the answer
   * lists those done, and the error. Asked again for port 0, a proxy created with port 0 is the same one (in
   * toxiproxy it is replaced, its toxics lost: its PR #356).
   */
  populate(items: unknown[]): { done: Proxy[]; error?: ApiError } {
    const parsed = items.map((item, i) => {
      if (!isObject(item)) throw new ApiError(400, `bad request body: proxy ${i + 1} is not an object`);
      return this.parseProxy(item, ` at proxy ${i + 1}`);
    });
    const done: Proxy[] = [];
    for (const { proxy, enabled } of parsed) {
      const existing = this.proxies.get(proxy.name);
      const sameUpstream = existing?.toJSON().upstream === proxy.toJSON().upstream;
      if (existing && sameUpstream && (existing.requested === proxy.requested || existing.listen === proxy.listen)) {
        done.push(existing);
        continue;
      }
      existing?.stop("proxy replaced");
      try {
        if (enabled) this.startProxy(proxy);
      } catch (error) {
        if (error instanceof ApiError) return { done, error }; // the old one stays, stopped, as in toxiproxy
        throw error;
      }
      this.proxies.set(proxy.name, proxy);
      done.push(proxy);
    }
    return { done };
  }

  /** POST /reset: every proxy enabled, every toxic removed; a proxy that cannot listen does not stop the others. */
  private reset(): void {
    let failure: ApiError | undefined;
    for (const proxy of this.proxies.values()) {
      proxy.toxics.list = [];
      proxy.counters.toxics.clear();
      proxy.toxicsChanged("every toxic removed (reset)");
      try {
        if (!proxy.enabled) this.startProxy(proxy);
      } catch (error) {
        if (!(error instanceof ApiError)) throw error;
        failure ??= error; // toxiproxy stops at the first, leaving the rest as they were, in random order
      }
    }
    if (failure) throw failure;
  }

  /**
   * The API: toxiproxy's routes, shapes, status codes and error bodies.
   *   GET /version                   {"version": "2.12.0"}     POST /populate         create or keep a list (201)
   *   GET /proxies                   every proxy, by name      POST /proxies          create one (201)
   *   GET /proxies/NAME              one, with its toxics      PATCH /proxies/NAME    listen, upstream, enabled
   *   DELETE /proxies/NAME           remove it (204)           POST /reset            enable all, remove all toxics
   *   GET /proxies/NAME/toxics       its toxics                POST /proxies/NAME/toxics   add one (200)
   *   GET, PATCH, DELETE /proxies/NAME/toxics/TOXIC            one toxic
   *   GET /metrics                   Prometheus text: per proxy and per toxic
   */
  serveApi(address: Address): number {
    const server = serveHttpApi(address, this.log, async (request, path) => {
      const [top, name, sub, toxic, ...more] = path.slice(1).split("/").map(decodeURIComponent);
      if (top === "version" && name === undefined) {
        allow(request, path, "GET");
        const headers = { "content-type": "application/json;charset=utf-8" };
        return new Response(`{"version": "${TOXIPROXY_VERSION}"}\n`, { headers }); // byte for byte toxiproxy's
      }
      if (top === "metrics" && name === undefined) {
        return new Response(this.metricsText(), { headers: { "content-type": "text/plain; version=0.0.4" } });
      }
      if (top === "reset" && name === undefined) {
        allow(request, path, "POST"); // the body is not read: toxiproxy ignores it
        this.reset();
        return new Response(null, { status: 204 });
      }
      if (top === "populate" && name === undefined) {
        allow(request, path, "POST");
        // Errors too are JSON with the proxies done, as toxiproxy answers here; [] where toxiproxy says null.
        try {
          const { done, error } = this.populate(await readBody(request, "list"));
          const body = error ? { error: error.message, status: error.status, proxies: done } : { proxies: done };
          return Response.json(body, { status: error?.status ?? 201 });
        } catch (error) {
          if (!(error instanceof ApiError || error instanceof ToxicError)) throw error;
          const status = error instanceof ApiError ? error.status : 400;
          return Response.json({ error: error.message, status, proxies: [] }, { status });
        }
      }
      if (top !== "proxies" || name === "" || toxic === "" || (sub !== undefined && sub !== "toxics") || more.length) {
        throw new ApiError(404, `no route ${path}`, "route");
      }
      if (name === undefined) {
        allow(request, path, "GET", "POST");
        if (request.method === "POST") return Response.json(this.create(await readBody(request)), { status: 201 });
        return Response.json(Object.fromEntries([...this.proxies].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))));
      }
      const methods = sub !== undefined && toxic === undefined ? ["GET", "POST"] : ["GET", "PATCH", "POST", "DELETE"];
      allow(request, path, ...methods); // POST on a proxy or a toxic: toxiproxy's older clients update with it
      const proxy = this.proxies.get(name);
      if (proxy === undefined) throw new ApiError(404, "proxy not found");
      if (sub !== undefined) return proxy.handleToxics(request, toxic);
      if (request.method === "DELETE") {
        proxy.stop("proxy removed");
        this.proxies.delete(proxy.name);
        return new Response(null, { status: 204 });
      }
      if (request.method !== "GET") this.update(proxy, await readBody(request));
      return Response.json(proxy);
    });
    this.api = server;
    const port = server.port ?? address.port;
    this.log.info(`API on http://${formatAddress(address.host, port)}`);
    return port;
  }

  serveMetrics(address: Address): void {
    const server = Bun.serve({
      hostname: address.host,
      port: address.port,
      fetch: (request) => {
        if (new URL(request.url).pathname !== "/metrics") return new Response("not found\n", { status: 404 });
        return new Response(this.metricsText(), { headers: { "content-type": "text/plain; version=0.0.4" } });
      },
    });
    this.log.info(`metrics on http://${formatAddress(address.host, server.port ?? address.port)}/metrics`);
  }

  /**
   * The Prometheus text, on the API's /metrics and on --metrics-port: toxiproxy's two byte counters with its
   * labels, kept up to date as bytes flow (toxiproxy adds them when a connection ends, and never removes them);
   * per proxy, whether it listens and its connections; per toxic, the connections it applied to, the bytes it
   * dropped and the connections it ended; then the process's totals of the earlier stages.
   */
  metricsText(): string {
    type Samples = [Record<string, string>, number][];
    const lines: string[] = [];
    const escape = (value: string): string =>
      value.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
    const series = (name: string, type: string, help: string, samples: Samples): void => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [labels, value] of samples) {
        const text = Object.entries(labels).map(([key, label]) => `${key}="${escape(label)}"`);
        lines.push(`${name}{${text.join(",")}} ${value}`);
      }
    };
    const proxies = [...this.proxies.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const ways = ["upstream", "downstream"] as const;
    const byLink = (count: (proxy: Proxy, way: Stream) => number): Samples =>
      proxies.flatMap((proxy) =>
        ways.map((way): Samples[number] => [
          { direction: way, proxy: proxy.name, listener: proxy.listen, upstream: proxy.toJSON().upstream },
          count(proxy, way),
        ]),
      );
    const byProxy = (value: (proxy: Proxy) => number): Samples => proxies.map((p) => [{ proxy: p.name }, value(p)]);
    const toxics = proxies.flatMap((proxy) => proxy.listed().map((toxic) => [proxy, toxic] as const));
    const byToxic = (what: "applied" | "dropped" | "ended"): Samples =>
      toxics.map(([proxy, toxic]) => [
        { proxy: proxy.name, toxic: toxic.name, type: toxic.type, stream: direction(toxic) },
        proxy.counters.toxic(toxic.name)[what],
      ]);
    const help = (what: string) => `Bytes ${what} of each direction of each proxy, as they flow.`;
    series(
      "toxiproxy_proxy_received_bytes_total",
      "counter",
      help("read from the source"),
      byLink((p, way) => p.counters.received[way]),
    );
    series(
      "toxiproxy_proxy_sent_bytes_total",
      "counter",
      help("written to the destination"),
      byLink((p, way) => p.counters.sent[way]),
    );
    series(
      "toxiproxy_proxy_enabled",
      "gauge",
      "1 while the proxy listens.",
      byProxy((p) => Number(p.enabled)),
    );
    series(
      "toxiproxy_proxy_connections_active",
      "gauge",
      "Client connections served now.",
      byProxy((p) => p.active),
    );
    series(
      "toxiproxy_proxy_connections_total",
      "counter",
      "Client connections accepted.",
      byProxy((p) => p.counters.accepted),
    );
    series(
      "toxiproxy_toxic_connections_total",
      "counter",
      "Connections the toxic applied to (toxicity).",
      byToxic("applied"),
    );
    series(
      "toxiproxy_toxic_dropped_bytes_total",
      "counter",
      "Bytes dropped (timeout, reset_peer).",
      byToxic("dropped"),
    );
    series(
      "toxiproxy_toxic_ended_connections_total",
      "counter",
      "Connections closed or reset by the toxic.",
      byToxic("ended"),
    );
    const upstreams = proxies.flatMap((proxy) => proxy.pool.upstreams);
    return `${lines.join("\n")}\n${this.metrics.render(this.active, upstreams)}`;
  }

  private proxyIdle(): void {
    if (this.draining && this.active === 0) this.exit("all connections finished");
  }

  /**
   * Graceful shutdown: every proxy stops accepting (and the API stops taking changes), the open connections
   * finish on their own, and whatever is still open when the deadline comes is closed. A second signal does not
   * wait.
   */
  shutdown(signal: string): void {
    if (this.draining) {
      this.log.warn(`${signal} again: closing ${this.active} connections now`);
      return this.closeAll();
    }
    this.draining = true;
    void this.api?.stop();
    for (const proxy of this.proxies.values()) proxy.drain(); // stop accepting; open connections carry on
    if (this.active === 0) return this.exit(`${signal}, no open connections`);
    this.log.info(
      `${signal}: no longer accepting, waiting up to ${seconds(this.config.limits.drainMs)} ` +
        `for ${this.active} connections to finish`,
    );
    setTimeout(() => {
      this.log.warn(`drain deadline reached: closing ${this.active} connections`);
      this.closeAll();
    }, this.config.limits.drainMs).unref();
  }

  private closeAll(): void {
    for (const proxy of this.proxies.values()) proxy.stop("shutdown");
    this.exit("shut down");
  }

  private exit(why: string): void {
    this.log.info(`${why}, exiting`);
    process.exit(0);
  }
}

function describeError(error: NodeJS.ErrnoException): string {
  if (error.code === "ECONNREFUSED") return "connection refused";
  if (error.code === "ENOTFOUND" || error.code === "EAI_NONAME") return "host not found";
  return error.code ?? error.message;
}

function formatAddress(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

// The usage line names the command as it was started, so renaming or copying the stage changes nothing here:
// `bun PATH` for this file, or the name it was built under (`bun run build`: an executable or an installed command).
const THIS_COMMAND = import.meta.path.endsWith(".ts")
  ? `bun ${relative(process.cwd(), import.meta.path)}`
  : basename(import.meta.path);

const HELP = `Usage: ${THIS_COMMAND} [options]

Forwards every TCP connection accepted on HOST:PORT to one of the upstreams, bytes intact in both directions;
with --api-port, more proxies are created, changed and removed while it runs (toxiproxy's HTTP routes).
Prints "api on HOST:PORT" (with --api-port) and "listening on HOST:PORT" (for its proxy) on stdout.

Options:
  --name NAME           the name of the command line's proxy in the API (default "default")
  --host HOST           address to listen on (default 127.0.0.1)
  --port PORT           port to listen on, 0 for a free one (default 6000; with --api-port and neither
                        --port nor --upstream, no proxy is started: the API creates them)
  --upstream HOST:PORT  an upstream to forward connections to; repeat for several (default 127.0.0.1:5000);
                        IPv6 as [::1]:5000
  --balance RULE        roundrobin, leastconn (fewest connections) or random2 (the less loaded of two picked
                        at random) (default roundrobin)
  --retries N           after a failed connect, how many other upstreams to try (default 2)
  --fail-timeout S      seconds an upstream is skipped after a failed connect (default 10)
  --health-interval S   seconds between active TCP health checks of every upstream, 0 = none (default 2)
  --rise N              good checks in a row that bring a down upstream back (default 2)
  --fall N              failed checks in a row that take an upstream out (default 3)
  --connect-timeout S   seconds to wait for the upstream connection to open (default 5)
  --idle-timeout S      seconds without traffic either way before closing both sides, 0 = never (default 300)
  --max-clients N       clients served at once; more are closed at once (default 1000)
  --max-per-ip N        clients served at once from one IP address, 0 = no limit (default 0)
  --drain-timeout S     on SIGINT/SIGTERM, seconds to let open connections finish (default 10)
  --metrics-port PORT   serve Prometheus metrics at http://METRICS-HOST:PORT/metrics (default: none)
  --metrics-host HOST   address for the metrics endpoint (default 127.0.0.1)
  --send-proxy          send a PROXY protocol v1 header (text) to the upstream before the client's bytes
  --send-proxy-v2       send a PROXY protocol v2 header (binary) instead
  --accept-proxy        require a PROXY header (v1 or v2) from every client, as sent by a load balancer in
                        front; a missing or malformed one closes the connection
  --allow CIDR          admit only clients in these networks (repeatable), e.g. 10.0.0.0/8, ::1/128
  --deny CIDR           refuse clients in these networks (repeatable); deny wins over allow
  --toxic SPEC          inject a fault (repeatable): TYPE:STREAM[:KEY=VALUE,...], STREAM upstream (client to
                        server) or downstream, keys the type's attributes plus toxicity (0-1) and name:
                          latency:downstream:latency=100,jitter=20      (ms)
                          bandwidth:upstream:rate=512                    (KB/s)
                          slicer:downstream:average_size=10,delay=500    (bytes, microseconds)
                          limit_data:downstream:bytes=1000               (then the connection is closed)
                          timeout:upstream:timeout=2000                  (stall; close after ms, 0 = never)
                          reset_peer:downstream:timeout=500,toxicity=0.1 (RST after ms)
  --api-port PORT       HTTP API to create, change and remove proxies and their toxics while running, 0 for a
                        free port (default: none); every proxy takes the settings of this command line
  --api-host HOST       address for the API (default 127.0.0.1)
  --config FILE         proxies to create at start, toxiproxy's JSON: [{"name", "listen", "upstream",
                        "enabled", "toxics"}, ...]; a bad file is an error, not a log line
  --seed N              seed every random choice of the toxics (toxicity, jitter, slicer), to repeat a run
  --version             print the toxiproxy version whose API this answers as, and exit
  --log-level LEVEL     debug, info, warn or error (default info)
  -h, --help            show this help
`;

class UsageError extends Error {}

function parsePort(text: string, flag: string): number {
  if (!/^\d+$/.test(text) || Number(text) > 65535) {
    throw new UsageError(`${flag} must be an integer from 0 to 65535, got "${text}"`);
  }
  return Number(text);
}

/** --toxic TYPE:STREAM[:KEY=VALUE,...] */
function parseToxicFlag(text: string): Toxic {
  const [type, stream, settings = "", ...rest] = text.split(":");
  if (!type || !stream || rest.length > 0) {
    throw new UsageError(`--toxic must look like TYPE:STREAM[:KEY=VALUE,...], got "${text}"`);
  }
  const description: Record<string, unknown> = { type, stream };
  const attributes: Record<string, number> = {};
  for (const setting of settings.split(",").filter(Boolean)) {
    const [key = "", value = ""] = setting.split("=");
    if (key === "name") description.name = value;
    else if (!/^\d+(\.\d+)?$/.test(value)) throw new UsageError(`--toxic ${key} must be a number >= 0, got "${value}"`);
    else if (key === "toxicity") description.toxicity = Number(value);
    else attributes[key] = Number(value);
  }
  try {
    return makeToxic({ ...description, attributes });
  } catch (error) {
    const why = error instanceof ToxicError ? error.message.replace(/^bad request body: /, "") : undefined;
    if (why) throw new UsageError(`--toxic "${text}": ${why}`);
    throw error;
  }
}

function parseCount(text: string, flag: string, zeroAllowed: boolean): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || (value === 0 && !zeroAllowed) || value > 1_000_000) {
    throw new UsageError(`${flag} must be an integer ${zeroAllowed ? "from 0" : "from 1"} to 1000000, got "${text}"`);
  }
  return value;
}

/** Seconds on the command line (fractions allowed: 0.25), milliseconds inside. */
function parseSeconds(text: string, flag: string, zeroAllowed: boolean): number {
  const value = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text) || (value === 0 && !zeroAllowed) || value > 86_400) {
    throw new UsageError(
      `${flag} must be a number of seconds ${zeroAllowed ? "from 0" : "above 0"} to 86400, got "${text}"`,
    );
  }
  return Math.round(value * 1000);
}

function parseAddress(text: string, flag: string): Address {
  const match = text.match(/^(?:\[([^\]]+)\]|([^:\s]+)):(\d+)$/);
  if (!match) throw new UsageError(`${flag} must look like HOST:PORT or [IPV6]:PORT, got "${text}"`);
  const port = Number(match[3]);
  if (port < 1 || port > 65535) throw new UsageError(`${flag} needs a port from 1 to 65535, got "${text}"`);
  return { host: match[1] ?? match[2]!, port };
}

/** An API body's listen address: HOST:PORT, [IPV6]:PORT or :PORT (every interface); port 0 for a free one. */
function parseListen(text: string): Address {
  const match = text.match(/^(?:\[([^\]]+)\]|([^:\s]*)):(\d{1,5})$/);
  if (!match || Number(match[3]) > 65535) throw new ApiError(400, `listen must look like HOST:PORT, got "${text}"`);
  return { host: match[1] ?? (match[2] || "0.0.0.0"), port: Number(match[3]) };
}

/** An API body's upstream, as --upstream takes it; a bad one is a 400, not a usage error. */
function parseUpstream(text: string): Address {
  try {
    return parseAddress(text, "upstream");
  } catch (error) {
    if (error instanceof UsageError) throw new ApiError(400, error.message);
    throw error;
  }
}

function parseConfig(argv: string[]): ProxyConfig | "help" | "version" {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        host: { type: "string", default: "127.0.0.1" },
        name: { type: "string", default: "default" },
        port: { type: "string" },
        upstream: { type: "string", multiple: true },
        balance: { type: "string", default: "roundrobin" },
        retries: { type: "string", default: "2" },
        "fail-timeout": { type: "string", default: "10" },
        "health-interval": { type: "string", default: "2" },
        rise: { type: "string", default: "2" },
        fall: { type: "string", default: "3" },
        "connect-timeout": { type: "string", default: "5" },
        "idle-timeout": { type: "string", default: "300" },
        "max-clients": { type: "string", default: "1000" },
        "max-per-ip": { type: "string", default: "0" },
        "drain-timeout": { type: "string", default: "10" },
        "metrics-port": { type: "string" },
        "metrics-host": { type: "string", default: "127.0.0.1" },
        "send-proxy": { type: "boolean", default: false },
        "send-proxy-v2": { type: "boolean", default: false },
        "accept-proxy": { type: "boolean", default: false },
        allow: { type: "string", multiple: true, default: [] },
        deny: { type: "string", multiple: true, default: [] },
        toxic: { type: "string", multiple: true, default: [] },
        "api-port": { type: "string" },
        "api-host": { type: "string", default: "127.0.0.1" },
        config: { type: "string" },
        seed: { type: "string" },
        version: { type: "boolean", default: false },
        "log-level": { type: "string", default: "info" },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    // parseArgs can explain over several lines; a usage error is one.
    throw new UsageError((error as Error).message.replace(/\s*\n\s*/g, " "));
  }
  if (values.help) return "help";
  if (values.version) return "version";
  const port = parsePort(values.port ?? "6000", "--port");
  const alone = values["api-port"] === undefined && values.config === undefined; // only a command-line proxy
  const serveProxy = alone || values.port !== undefined || values.upstream !== undefined;
  const logLevel = values["log-level"];
  if (!LEVELS.includes(logLevel as Level)) {
    throw new UsageError(`--log-level must be one of ${LEVELS.join(", ")}, got "${logLevel}"`);
  }
  if (values.host === "") throw new UsageError("--host must not be empty");
  const upstreams = (values.upstream ?? ["127.0.0.1:5000"]).map((text) => parseAddress(text, "--upstream"));
  const balance = values.balance;
  if (!BALANCES.includes(balance as Balance)) {
    throw new UsageError(`--balance must be one of ${BALANCES.join(", ")}, got "${balance}"`);
  }
  const pool: PoolConfig = {
    balance: balance as Balance,
    retries: parseCount(values.retries, "--retries", true),
    failTimeoutMs: parseSeconds(values["fail-timeout"], "--fail-timeout", true),
    health: {
      intervalMs: parseSeconds(values["health-interval"], "--health-interval", true),
      rise: parseCount(values.rise, "--rise", false),
      fall: parseCount(values.fall, "--fall", false),
    },
  };
  const timeouts: Timeouts = {
    connectMs: parseSeconds(values["connect-timeout"], "--connect-timeout", false),
    idleMs: parseSeconds(values["idle-timeout"], "--idle-timeout", true),
  };
  const limits: Limits = {
    maxClients: parseCount(values["max-clients"], "--max-clients", false),
    maxPerIp: parseCount(values["max-per-ip"], "--max-per-ip", true),
    drainMs: parseSeconds(values["drain-timeout"], "--drain-timeout", true),
  };
  if (values["send-proxy"] && values["send-proxy-v2"]) {
    throw new UsageError("--send-proxy and --send-proxy-v2 exclude each other: pick one version");
  }
  const cidrs = (texts: string[], flag: string): Cidr[] =>
    texts.map((text) => {
      const cidr = parseCidr(text);
      if (!cidr) throw new UsageError(`${flag} must be an IPv4 or IPv6 network like 10.0.0.0/8, got "${text}"`);
      return cidr;
    });
  const metricsPort = values["metrics-port"];
  const edges: Edges = {
    metrics:
      metricsPort === undefined
        ? undefined
        : { host: values["metrics-host"], port: parsePort(metricsPort, "--metrics-port") },
    sendProxy: values["send-proxy-v2"] ? 2 : values["send-proxy"] ? 1 : 0,
    acceptProxy: values["accept-proxy"],
    allow: cidrs(values.allow, "--allow"),
    deny: cidrs(values.deny, "--deny"),
  };
  const toxics = values.toxic.map(parseToxicFlag);
  const names = toxics.map((toxic) => toxic.name);
  const twice = names.find((name, i) => names.indexOf(name) !== i);
  if (twice) throw new UsageError(`two toxics named ${twice}: give one of them name=...`);
  if (toxics.length > 0 && !serveProxy) throw new UsageError("--toxic is for the command line's proxy: give --port");
  if (values.name === "") throw new UsageError("--name must not be empty");
  const apiPort = values["api-port"];
  const api = apiPort === undefined ? undefined : { host: values["api-host"], port: parsePort(apiPort, "--api-port") };
  return {
    name: values.name,
    serveProxy,
    host: values.host,
    port,
    upstreams,
    pool,
    timeouts,
    limits,
    edges,
    toxics,
    api,
    configFile: values.config,
    seed: values.seed === undefined ? undefined : parseCount(values.seed, "--seed", true),
    logLevel: logLevel as Level,
  };
}

// For the tests: the toxics' arithmetic, checked in-process with a hand-driven clock. Importing this file starts
// nothing; main() runs only when the file itself is run.
export { type Clock, delayed, Lane, makeToxic, MAX_ATTRIBUTE, paced, type Piece, sliced, type Toxic };

/**
 * --config: the proxies of toxiproxy's JSON config file, created before the API answers. toxiproxy logs what goes
 * wrong and runs on without them; here a file that cannot be read or is not a valid list is one line and exit 2,
 * and a proxy that cannot listen one line and exit 1, as for the command line's own proxy.
 */
function loadConfigFile(plane: ControlPlane, file: string): void {
  const fail = (code: number, why: string): never => {
    process.stderr.write(`error: --config ${file}: ${why}\n`);
    process.exit(code);
  };
  let items: unknown;
  try {
    items = JSON.parse(readFileSync(file, "utf8"));
  } catch (error) {
    const { code, message } = error as NodeJS.ErrnoException;
    fail(2, code === "ENOENT" ? "no such file" : (code ?? message.replace(/\s*\n\s*/g, " ")));
  }
  if (!Array.isArray(items)) return void fail(2, "must be a JSON list of proxies");
  try {
    const { error } = plane.populate(items);
    if (error) fail(1, error.message);
  } catch (error) {
    if (error instanceof ApiError || error instanceof ToxicError) fail(2, error.message);
    throw error;
  }
}

function main(): void {
  let config: ProxyConfig | "help" | "version";
  try {
    config = parseConfig(process.argv.slice(2));
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`error: ${error.message} (see --help)\n`);
    process.exit(2);
  }
  if (config === "help") {
    process.stdout.write(HELP);
    return;
  }
  if (config === "version") {
    process.stdout.write(`toxiproxy-compatible ${TOXIPROXY_VERSION} (${THIS_COMMAND})\n`);
    return;
  }
  if (config.seed !== undefined) chance = seeded(config.seed);
  const plane = new ControlPlane(config);
  const listen = (what: string, address: Address, start: () => number | void): number | void => {
    try {
      return start();
    } catch (error) {
      const { code, message } = error as NodeJS.ErrnoException;
      const reason = code === "EADDRINUSE" ? "address already in use" : (code ?? message);
      process.stderr.write(`error: cannot listen ${what}on ${formatAddress(address.host, address.port)}: ${reason}\n`);
      process.exit(1);
    }
  };
  const { api, edges, configFile } = config;
  if (configFile) loadConfigFile(plane, configFile);
  if (edges.metrics) listen("for metrics ", edges.metrics, () => plane.serveMetrics(edges.metrics!));
  const apiPort = api && listen("for the API ", api, () => plane.serveApi(api));
  const port = config.serveProxy ? listen("", config, () => plane.startCommandLineProxy()) : undefined;
  // Before the lines below: whoever reads them may signal at once.
  process.on("SIGINT", () => plane.shutdown("SIGINT"));
  process.on("SIGTERM", () => plane.shutdown("SIGTERM"));
  if (api && apiPort) console.log(`api on ${formatAddress(api.host, apiPort)}`);
  if (port) console.log(`listening on ${formatAddress(config.host, port)}`);
}

// Run as a program (`bun FILE.ts`, or built by `bun run build`, where a launcher imports it), not when a test imports
// this file for its toxics' arithmetic.
if (import.meta.main || !import.meta.path.endsWith(".ts")) main();
