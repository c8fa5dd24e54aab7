// A small authoritative DNS server for the tests, in-process, whose answers a test changes at any time.
//
// It answers A and AAAA questions (class IN) over UDP, and over TCP on the same port, for the names it is told
// about, with one TTL for all of a name's records; a name without a record of the asked type gets an empty answer
// (NOERROR, no records). An answer can be made too big for UDP (`truncated`: the UDP reply has TC set and no
// records, the TCP one has them all), and a name can fail in the ways real servers do: NXDOMAIN, SERVFAIL,
// REFUSED, or no reply at all (the client times out). Unknown names are NXDOMAIN. Every question is recorded
// (name, type, transport, when), so a test can wait for the next one instead of sleeping.
//
// By hand (the proxy's "Try it"): bun test/support/dns-server.ts --port 5353 echo.test=127.0.0.2,127.0.0.3
// serves those names until Ctrl-C; to change an answer, start it again with others.

import type { Socket, TCPSocketListener, udp } from "bun";
import { parseArgs } from "node:util";

/**
 * What a name answers: addresses (IPv4 ones become A records, IPv6 ones AAAA), TTL 60 s unless given, over UDP
 * only if not `truncated`; or a failure ("timeout": no reply at all).
 */
export type DnsAnswer =
  | { addresses: string[]; ttl?: number; truncated?: boolean }
  | "nxdomain"
  | "servfail"
  | "refused"
  | "timeout";

export interface DnsQuestion {
  name: string;
  /** "A", "AAAA", or the type number for anything else. */
  type: string;
  transport: "udp" | "tcp";
  /** performance.now() when it arrived. */
  at: number;
}

interface TcpState {
  buffered: Uint8Array;
}

const TYPE_A = 1;
const TYPE_AAAA = 28;
const RCODE = { noerror: 0, servfail: 2, nxdomain: 3, refused: 5 } as const;

export class DnsServer implements AsyncDisposable {
  readonly questions: DnsQuestion[] = [];
  private readonly answers = new Map<string, DnsAnswer>();
  private readonly wake = new Set<() => void>();

  private constructor(
    private readonly socket: udp.Socket<"buffer">,
    private readonly tcp: TCPSocketListener<TcpState>,
    readonly host: string,
  ) {}

  /** Called with every question as it arrives (the command line logs them). */
  onQuestion: (question: DnsQuestion) => void = () => {};

  /** Listens on `host` (default 127.0.0.1), UDP and TCP, on a port free for both unless `port` is given. */
  static async start(host = "127.0.0.1", port = 0): Promise<DnsServer> {
    let server: DnsServer | undefined;
    for (let attempt = 1; ; attempt++) {
      const socket = await Bun.udpSocket({
        hostname: host,
        port,
        socket: { data: (_socket, packet, port, address) => server?.receiveUdp(packet, port, address) },
      });
      try {
        const tcp = Bun.listen<TcpState>({
          hostname: host,
          port: socket.port,
          socket: {
            open: (client) => void (client.data = { buffered: new Uint8Array(0) }),
            data: (client, chunk) => server?.receiveTcp(client, chunk),
            error: () => {},
          },
        });
        server = new DnsServer(socket, tcp, host);
        return server;
      } catch (error) {
        socket.close(); // that port is taken for TCP: try another one
        if (port !== 0 || attempt === 10) throw error;
      }
    }
  }

  get port(): number {
    return this.socket.port;
  }

  /** `HOST:PORT`, as the proxy's --resolver takes it. */
  get address(): string {
    return this.host.includes(":") ? `[${this.host}]:${this.port}` : `${this.host}:${this.port}`;
  }

  /**
   * From now on `name` answers `answer` (names compare case-insensitively, without a trailing dot), to questions
   * of type `only` if given (an AAAA question that fails while A ones are answered), else to every question.
   */
  set(name: string, answer: DnsAnswer, only?: "A" | "AAAA"): void {
    if (only === undefined) for (const type of ["A", "AAAA"]) this.answers.delete(`${normalise(name)} ${type}`);
    this.answers.set(only === undefined ? normalise(name) : `${normalise(name)} ${only}`, answer);
  }

  /** Resolves once `count` questions in all have arrived (for `name`, if given); returns that question. */
  waitForQuestion(count: number, timeoutMs = 5000, name?: string): Promise<DnsQuestion> {
    const matching = (): DnsQuestion[] =>
      name === undefined ? this.questions : this.questions.filter((question) => question.name === normalise(name));
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const found = matching()[count - 1];
        if (found === undefined) return;
        finish();
        resolve(found);
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`dns server: ${matching().length} questions after ${timeoutMs} ms, waited for ${count}`));
      }, timeoutMs);
      const finish = (): void => {
        clearTimeout(timer);
        this.wake.delete(check);
      };
      this.wake.add(check);
      check();
    });
  }

  private receiveUdp(packet: Buffer, port: number, address: string): void {
    const response = this.respond(packet, "udp");
    if (response) this.socket.send(response, port, address);
  }

  /** Over TCP every message has a 2-byte length in front (RFC 1035 4.2.2). */
  private receiveTcp(client: Socket<TcpState>, chunk: Uint8Array): void {
    let bytes = new Uint8Array([...client.data.buffered, ...chunk]);
    while (bytes.length >= 2 && bytes.length >= 2 + ((bytes[0]! << 8) | bytes[1]!)) {
      const length = (bytes[0]! << 8) | bytes[1]!;
      const response = this.respond(bytes.subarray(2, 2 + length), "tcp");
      if (response) client.write(new Uint8Array([response.length >> 8, response.length & 0xff, ...response]));
      bytes = bytes.subarray(2 + length);
    }
    client.data.buffered = bytes;
  }

  /** The reply to one query, or undefined for none. */
  private respond(packet: Uint8Array, transport: "udp" | "tcp"): Uint8Array | undefined {
    const query = parseQuery(packet);
    if (query === undefined) return undefined; // not a question we understand: a real server would say FORMERR
    const type = query.type === TYPE_A ? "A" : query.type === TYPE_AAAA ? "AAAA" : String(query.type);
    const question = { name: query.name, type, transport, at: performance.now() };
    this.questions.push(question);
    this.onQuestion(question);
    for (const wake of [...this.wake]) wake();
    const answer = this.answers.get(`${query.name} ${type}`) ?? this.answers.get(query.name) ?? "nxdomain";
    if (answer === "timeout") return undefined;
    if (typeof answer === "string") return reply(packet, query.end, RCODE[answer], false, query.type, 0, []);
    if (answer.truncated && transport === "udp")
      return reply(packet, query.end, RCODE.noerror, true, query.type, 0, []);
    const wanted = query.type === TYPE_A ? 4 : query.type === TYPE_AAAA ? 16 : 0;
    const records = answer.addresses.map(ipBytes).filter((bytes) => bytes.length === wanted);
    return reply(packet, query.end, RCODE.noerror, false, query.type, answer.ttl ?? 60, records);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.socket.close();
    this.tcp.stop(true);
  }
}

function normalise(name: string): string {
  return name.toLowerCase().replace(/\.$/, "");
}

/** The question of a DNS query: its name, type and where the question section ends. */
function parseQuery(packet: Uint8Array): { name: string; type: number; end: number } | undefined {
  if (packet.length < 12 || (packet[2]! & 0x80) !== 0) return undefined; // too short, or a response
  const view = new DataView(packet.buffer, packet.byteOffset, packet.byteLength);
  if (view.getUint16(4) !== 1) return undefined; // exactly one question, as every resolver sends
  const labels: string[] = [];
  let offset = 12;
  for (;;) {
    const length = packet[offset];
    if (length === undefined || length > 63) return undefined;
    offset++;
    if (length === 0) break;
    labels.push(new TextDecoder().decode(packet.subarray(offset, offset + length)));
    offset += length;
  }
  if (offset + 4 > packet.length) return undefined;
  return { name: normalise(labels.join(".")), type: view.getUint16(offset), end: offset + 4 };
}

/** The reply: the query's ID and question, the flags, then one record per address (name = pointer to the question). */
function reply(
  query: Uint8Array,
  questionEnd: number,
  rcode: number,
  truncated: boolean,
  type: number,
  ttl: number,
  records: Uint8Array[],
): Uint8Array {
  const size = questionEnd + records.reduce((sum, rdata) => sum + 12 + rdata.length, 0);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  out.set(query.subarray(0, questionEnd));
  // QR=1, opcode 0, AA=1, TC, RD copied from the query; RA=0 (authoritative, not recursive); RCODE.
  out[2] = 0x84 | (truncated ? 0x02 : 0) | (query[2]! & 0x01);
  out[3] = rcode;
  view.setUint16(6, records.length); // ANCOUNT
  view.setUint16(8, 0); // NSCOUNT
  view.setUint16(10, 0); // ARCOUNT: an EDNS OPT record in the query is not echoed
  let offset = questionEnd;
  for (const rdata of records) {
    view.setUint16(offset, 0xc00c); // the name: a pointer to the question's, at byte 12
    view.setUint16(offset + 2, type);
    view.setUint16(offset + 4, 1); // class IN
    view.setUint32(offset + 6, ttl);
    view.setUint16(offset + 10, rdata.length);
    out.set(rdata, offset + 12);
    offset += 12 + rdata.length;
  }
  return out;
}

/** An IPv4 or IPv6 address in text as its 4 or 16 bytes. */
function ipBytes(text: string): Uint8Array {
  if (!text.includes(":")) return new Uint8Array(text.split(".").map(Number));
  const [left = "", right] = text.split("::");
  const groups = (part: string): number[] => (part === "" ? [] : part.split(":").map((group) => parseInt(group, 16)));
  const head = groups(left);
  const tail = right === undefined ? [] : groups(right);
  const all = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  const bytes = new Uint8Array(16);
  all.forEach((group, i) => {
    bytes[2 * i] = group >> 8;
    bytes[2 * i + 1] = group & 0xff;
  });
  return bytes;
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    options: { host: { type: "string", default: "127.0.0.1" }, port: { type: "string", default: "5353" } },
    allowPositionals: true,
  });
  const server = await DnsServer.start(values.host, Number(values.port));
  for (const entry of positionals) {
    const [name = "", addresses = ""] = entry.split("=");
    server.set(name, { addresses: addresses.split(",").filter(Boolean), ttl: 5 });
  }
  server.onQuestion = (question) => process.stderr.write(`${question.type} ${question.name} (${question.transport})\n`);
  console.log(`listening on ${server.address} (udp)`);
}
