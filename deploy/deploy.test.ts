// deploy/, checked offline: every manifest against the vendored schemas (deploy/schemas/README.md: Kubernetes
// v1.35.0, strict; the Compose Specification), then what a schema cannot see: Services, budgets and autoscalers
// select the pods they mean; probes and Services name ports the containers have; grace periods outlast the drain;
// images are the Dockerfile's; every environment variable and flag is one the command takes (from its --help);
// memory limits hold the worst case the limits allow; the systemd unit runs a built command with an open-files limit
// above its client cap, and systemd-analyze accepts it.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import Ajv2020, { type ValidateFunction } from "ajv/dist/2020";
import { COMMANDS, type CommandName, ROOT, sourceOf } from "../build/commands.ts";
import { TempTree, runToExit, startStage } from "../test/support/process.ts";

const DEPLOY = join(ROOT, "deploy");

// ---------------------------------------------------------------------------------------------------------------
// Schemas.

// strictTypes off: ajv's authoring lint rejects the Compose schema's style; it changes no validation result.
const ajv = new Ajv2020({ allErrors: true, strictTypes: false, allowUnionTypes: true });
const kubernetesSchema = JSON.parse(readFileSync(join(DEPLOY, "schemas", "kubernetes.json"), "utf8"));
ajv.addSchema(kubernetesSchema);
ajv.addSchema(JSON.parse(readFileSync(join(DEPLOY, "schemas", "compose-spec.json"), "utf8")));
const validateCompose = ajv.getSchema("compose_spec.json")!;

type Json = Record<string, any>; // manifests are checked against schemas, not typed

/** The schema for a Kubernetes object, found by the apiVersion and kind it declares. */
function kubernetesValidator(manifest: Json): ValidateFunction {
  const found = Object.entries(kubernetesSchema.$defs as Record<string, Json>).find(
    ([, schema]) =>
      schema.properties?.kind?.enum?.[0] === manifest.kind &&
      schema.properties?.apiVersion?.enum?.[0] === manifest.apiVersion,
  );
  if (!found) throw new Error(`no schema for ${manifest.apiVersion} ${manifest.kind} (deploy/schemas/README.md)`);
  return ajv.getSchema(`kubernetes.json#/$defs/${found[0]}`)!;
}

function errorsOf(validate: ValidateFunction, value: unknown): string[] {
  return validate(value)
    ? []
    : (validate.errors ?? []).map((e) => `${e.instancePath} ${e.message} ${JSON.stringify(e.params)}`);
}

const readYaml = (path: string): Json[] => [Bun.YAML.parse(readFileSync(path, "utf8")) as Json | Json[]].flat();
const KUBERNETES_FILES = readdirSync(join(DEPLOY, "kubernetes")).filter((f) => f.endsWith(".yaml"));
const manifests = KUBERNETES_FILES.flatMap((file) =>
  readYaml(join(DEPLOY, "kubernetes", file)).map((manifest) => ({ file, manifest })),
);
const compose = readYaml(join(DEPLOY, "compose.yaml"))[0]!;

describe("schemas", () => {
  test.each(manifests.map(({ file, manifest }) => [`${file}: ${manifest.kind} ${manifest.metadata?.name}`, manifest]))(
    "%s is valid Kubernetes v1.35",
    (_, manifest) => {
      expect(errorsOf(kubernetesValidator(manifest), manifest)).toEqual([]);
    },
  );

  test("compose.yaml is a valid Compose file", () => {
    expect(errorsOf(validateCompose, compose)).toEqual([]);
  });

  test("the schemas are strict: a misspelt field fails in each", () => {
    const deployment = structuredClone(manifests.find(({ manifest }) => manifest.kind === "Deployment")!.manifest);
    deployment.spec.template.spec.terminationGracePeriodSecond = 15;
    expect(errorsOf(kubernetesValidator(deployment), deployment).join()).toContain("terminationGracePeriodSecond");
    const misspelt = structuredClone(compose);
    misspelt.services.echo.stop_grace_periods = "15s";
    expect(errorsOf(validateCompose, misspelt).join()).toContain("stop_grace_periods");
  });
});

// ---------------------------------------------------------------------------------------------------------------
// What the commands take, from their own --help: environment variables in [BRACKETS], and --flags.

async function helpOf(name: CommandName): Promise<string> {
  const { code, stdout } = await runToExit(sourceOf(name), ["--help"]);
  expect(code).toBe(0);
  return stdout;
}
const echoHelp = await helpOf("tcp-echo-server");
const proxyHelp = await helpOf("tcp-proxy");
const ECHO_VARIABLES = new Set([...echoHelp.matchAll(/\[([A-Z_]+)\]/g)].map((m) => m[1]!));
const flagsIn = (help: string): Set<string> =>
  new Set([...help.matchAll(/^\s+(?:-\w, )?(--[\w-]+)/gm)].map((m) => m[1]!));

/** Every flag the manifests give the proxy is one its --help lists (DNS discovery's included: stage 015). */
function checkProxyFlags(args: string[]): void {
  const known = flagsIn(proxyHelp);
  const used = args.filter((arg) => arg.startsWith("--"));
  expect(used.filter((flag) => !known.has(flag))).toEqual([]);
}

const argValue = (args: string[], flag: string): string | undefined => args[args.indexOf(flag) + 1];

/** "256k" -> bytes, as the echo server reads MAX_BUFFER. */
const bytes = (text: string): number => Number.parseFloat(text) * ({ k: 2 ** 10, m: 2 ** 20 }[text.at(-1)!] ?? 1);
/** Kubernetes memory quantity ("512Mi") or Compose size ("512M") -> bytes. */
const memory = (text: string): number =>
  Number.parseFloat(text) *
  ({ Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30 }[text.replace(/^[\d.]+/, "")] ?? 1);
/** What the runtime itself takes before any client: supervisor and one worker idle are ~70 MiB (docs/deploy.md). */
const RUNTIME_BYTES = 128 * 2 ** 20;

// ---------------------------------------------------------------------------------------------------------------
// The Dockerfile's images: name (from its header's `docker build` lines) -> target -> command.

const dockerfile = readFileSync(join(ROOT, "Dockerfile"), "utf8");
const IMAGE_TARGETS = new Map(
  [...dockerfile.matchAll(/^#\s+docker build (?:--target (\w+) )?-t (\w+) \.(?:\s|$)/gm)].map((m) => [
    m[2]!,
    m[1] ?? "echo",
  ]),
);
function commandOfTarget(target: string): CommandName {
  const section = dockerfile.slice(dockerfile.indexOf(`AS ${target}\n`));
  const entrypoint = JSON.parse(/^ENTRYPOINT (.*)$/m.exec(section)![1]!) as string[];
  return entrypoint[0]!.split("/").at(-1) as CommandName;
}
const packageVersion = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version as string;

/** The command an image reference runs, checking the name is one the Dockerfile builds and the tag is ours. */
function commandOfImage(image: string): CommandName {
  const [name, tag] = image.split(":");
  expect(IMAGE_TARGETS.has(name!)).toBe(true);
  expect(tag).toBe(packageVersion);
  return commandOfTarget(IMAGE_TARGETS.get(name!)!);
}

// ---------------------------------------------------------------------------------------------------------------
// Kubernetes cross-references.

const ofKind = (kind: string): Json[] =>
  manifests.filter(({ manifest }) => manifest.kind === kind).map((m) => m.manifest);
const deployments = ofKind("Deployment");
const matches = (selector: Record<string, string>, labels: Record<string, string>): boolean =>
  Object.entries(selector).every(([key, value]) => labels[key] === value);
const podsOf = (namespace: string, selector: Record<string, string>): Json[] =>
  deployments.filter((d) => d.metadata.namespace === namespace && matches(selector, d.spec.template.metadata.labels));
const container = (deployment: Json): Json => deployment.spec.template.spec.containers[0];
const env = (c: Json): Record<string, string> =>
  Object.fromEntries((c.env ?? []).map((e: Json) => [e.name as string, String(e.value)]));
const deploymentRunning = (command: CommandName): Json =>
  deployments.find((d) => commandOfImage(container(d).image) === command)!;

describe("Kubernetes: what the schema cannot see", () => {
  test("every object is in the one namespace, which a manifest creates", () => {
    const namespaces = ofKind("Namespace").map((n) => n.metadata.name);
    expect(namespaces).toHaveLength(1);
    for (const { manifest } of manifests)
      if (manifest.kind !== "Namespace") expect(manifest.metadata.namespace).toBe(namespaces[0]);
  });

  test("each Deployment's selector matches its pods; Services and budgets select exactly one Deployment", () => {
    for (const d of deployments)
      expect(matches(d.spec.selector.matchLabels, d.spec.template.metadata.labels)).toBe(true);
    for (const s of ofKind("Service")) expect(podsOf(s.metadata.namespace, s.spec.selector)).toHaveLength(1);
    for (const b of ofKind("PodDisruptionBudget"))
      expect(podsOf(b.metadata.namespace, b.spec.selector.matchLabels)).toHaveLength(1);
  });

  test("Services and probes name ports the container has; readiness and liveness are TCP probes", () => {
    for (const s of ofKind("Service")) {
      const ports = container(podsOf(s.metadata.namespace, s.spec.selector)[0]!).ports.map((p: Json) => p.name);
      for (const port of s.spec.ports) expect(ports).toContain(port.targetPort);
    }
    for (const d of deployments) {
      const c = container(d);
      for (const probe of [c.readinessProbe, c.livenessProbe]) {
        expect(probe.tcpSocket).toBeDefined();
        expect(c.ports.map((p: Json) => p.name)).toContain(probe.tcpSocket.port);
      }
    }
  });

  test("the autoscaler scales the echo Deployment on CPU, which its pods request", () => {
    const hpa = ofKind("HorizontalPodAutoscaler")[0]!;
    const echo = deploymentRunning("tcp-echo-server");
    expect(hpa.spec.scaleTargetRef).toEqual({ apiVersion: "apps/v1", kind: "Deployment", name: echo.metadata.name });
    expect(hpa.spec.metrics.map((m: Json) => m.resource.name)).toEqual(["cpu"]);
    expect(container(echo).resources.requests.cpu).toBeDefined();
    expect(hpa.spec.minReplicas).toBeGreaterThanOrEqual(2); // the budget lets one go at a time
  });

  test("images are the Dockerfile's, run as its user, each pod running the command its image holds", () => {
    const user = Number(/^USER (\d+):\d+$/m.exec(dockerfile)![1]);
    for (const d of deployments) {
      commandOfImage(container(d).image);
      expect(d.spec.template.spec.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: user });
    }
  });

  test("echo: the server's variables, grace > preStop + DRAIN_TIMEOUT, memory for the worst case", () => {
    const echo = deploymentRunning("tcp-echo-server");
    const variables = env(container(echo));
    expect(Object.keys(variables).filter((name) => !ECHO_VARIABLES.has(name))).toEqual([]);
    const preStop = container(echo).lifecycle.preStop.sleep.seconds;
    expect(echo.spec.template.spec.terminationGracePeriodSeconds).toBeGreaterThan(
      preStop + Number(variables.DRAIN_TIMEOUT),
    );
    expect(variables.HOST).toBe("0.0.0.0");
    expect(container(echo).ports.find((p: Json) => p.name === "echo").containerPort).toBe(Number(variables.PORT));
    const worstCase = Number(variables.MAX_CLIENTS) * bytes(variables.MAX_BUFFER!) + RUNTIME_BYTES;
    expect(memory(container(echo).resources.limits.memory)).toBeGreaterThanOrEqual(worstCase);
  });

  test("proxy: flags the stage takes, upstream = the echo pods' headless Service by its cluster DNS name", () => {
    const proxy = deploymentRunning("tcp-proxy");
    const args: string[] = container(proxy).args;
    checkProxyFlags(args);
    const [host, port] = argValue(args, "--upstream")!.split(":");
    const [service, namespace, ...rest] = host!.split(".");
    expect(rest.join(".")).toBe("svc.cluster.local");
    const headless = ofKind("Service").find((s) => s.metadata.name === service && s.metadata.namespace === namespace)!;
    expect(headless.spec.clusterIP).toBe("None");
    expect(headless.spec.ports.map((p: Json) => p.port)).toContain(Number(port));
    expect(podsOf(namespace!, headless.spec.selector)).toEqual([deploymentRunning("tcp-echo-server")]);
    expect(Number(argValue(args, "--resolve-interval"))).toBeGreaterThan(0);
    const preStop = container(proxy).lifecycle.preStop.sleep.seconds;
    const drain = Number(argValue(args, "--drain-timeout"));
    expect(proxy.spec.template.spec.terminationGracePeriodSeconds).toBeGreaterThan(preStop + drain);
    expect(container(proxy).ports.find((p: Json) => p.name === "proxy").containerPort).toBe(
      Number(argValue(args, "--port")),
    );
  });

  test("the proxy sends PROXY v2 to the echo pods, which require it (and whose health check sends it too)", () => {
    expect(container(deploymentRunning("tcp-proxy")).args).toContain("--send-proxy-v2");
    expect(flagsIn(echoHelp).has("--accept-proxy")).toBe(true);
    const env = container(deploymentRunning("tcp-echo-server")).env as Array<{ name: string; value: string }>;
    expect(env.find((variable) => variable.name === "ACCEPT_PROXY")?.value).toBe("1");
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Compose.

describe("compose: the proxy in front of three echo replicas", () => {
  test("images and targets are the Dockerfile's; three echo replicas; the proxy waits until healthy", () => {
    for (const service of Object.values(compose.services as Record<string, Json>)) {
      commandOfImage(service.image);
      expect(IMAGE_TARGETS.get(service.image.split(":")[0])).toBe(service.build.target);
      expect(service.build.context).toBe("..");
    }
    expect(commandOfImage(compose.services.echo.image)).toBe("tcp-echo-server");
    expect(compose.services.echo.deploy.replicas).toBe(3);
    expect(compose.services.proxy.depends_on.echo.condition).toBe("service_healthy");
  });

  test("the proxy's upstream is the echo service by name, on its port; stop grace periods outlast the drains", () => {
    const { echo, proxy } = compose.services;
    const args: string[] = proxy.command;
    checkProxyFlags(args);
    expect(commandOfImage(proxy.image)).toBe("tcp-proxy");
    const echoPort = /^\s+PORT=(\d+)/m.exec(dockerfile)![1];
    expect(argValue(args, "--upstream")).toBe(`echo:${echo.environment.PORT ?? echoPort}`);
    expect(Object.keys(echo.environment).filter((name) => !ECHO_VARIABLES.has(name))).toEqual([]);
    expect([args.includes("--send-proxy-v2"), echo.environment.ACCEPT_PROXY]).toEqual([true, "1"]); // both, or neither
    const seconds = (text: string): number => Number(text.replace(/s$/, ""));
    expect(seconds(echo.stop_grace_period)).toBeGreaterThan(Number(echo.environment.DRAIN_TIMEOUT));
    expect(seconds(proxy.stop_grace_period)).toBeGreaterThan(Number(argValue(args, "--drain-timeout")));
    expect(proxy.ports).toEqual([`${argValue(args, "--port")}:${argValue(args, "--port")}`]);
    const worstCase = Number(echo.environment.MAX_CLIENTS) * bytes("256k") + RUNTIME_BYTES; // MAX_BUFFER's default
    expect(memory(echo.deploy.resources.limits.memory)).toBeGreaterThanOrEqual(worstCase);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// systemd.

const UNIT_FILE = join(DEPLOY, "systemd", "tcp-echo-server.service");
const unitText = readFileSync(UNIT_FILE, "utf8");
/** [Service] settings (a key given twice keeps the last); Environment= parsed into its variables. */
const service = Object.fromEntries(
  unitText
    .slice(unitText.indexOf("[Service]"), unitText.indexOf("[Install]"))
    .split("\n")
    .filter((line) => /^\w+=/.test(line))
    .map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)]),
) as Record<string, string>;
const unitEnv = Object.fromEntries((service.Environment ?? "").split(/\s+/).map((pair) => pair.split("=", 2)));

describe("systemd unit", () => {
  test("runs a built command, with the server's variables, an open-files limit above its client cap", () => {
    const command = service.ExecStart!.split("/").at(-1) as CommandName;
    expect(COMMANDS.map((c) => c.name)).toContain(command);
    expect(Object.keys(unitEnv).filter((name) => !ECHO_VARIABLES.has(name))).toEqual([]);
    expect(Number(service.LimitNOFILE)).toBeGreaterThan(Number(unitEnv.MAX_CLIENTS) + 1000);
  });

  test("stops by SIGTERM to the supervisor alone, and waits longer than DRAIN_TIMEOUT before SIGKILL", () => {
    expect(service).toMatchObject({ KillSignal: "SIGTERM", KillMode: "mixed" });
    expect(Number(service.TimeoutStopSec)).toBeGreaterThan(Number(unitEnv.DRAIN_TIMEOUT));
  });

  test("systemd-analyze verify accepts it (ExecStart pointed at a command that exists here)", async () => {
    if (Bun.which("systemd-analyze") === null) {
      console.warn("skipped: no systemd-analyze on this machine (Debian package systemd)");
      return;
    }
    using tree = new TempTree();
    const unit = tree.write("tcp-echo-server.service", unitText.replace(service.ExecStart!, process.execPath));
    const result = await runToExit("systemd-analyze", ["verify", unit], { executable: true, cwd: tree.root });
    expect(result).toMatchObject({ code: 0, stderr: "" }); // unknown keys are only warned about on stderr
  });

  test("its environment, run here (PORT=0), serves and stops on SIGTERM with exit 0", async () => {
    const command = service.ExecStart!.split("/").at(-1) as CommandName;
    await using server = await startStage(sourceOf(command), [], {
      env: { ...unitEnv, PORT: "0", WORKERS: "1" },
    });
    expect(server.host).toBe(unitEnv.HOST);
    expect(await server.stop(service.KillSignal as NodeJS.Signals)).toBe(0);
  });
});

describe("docs/deploy.md", () => {
  const docs = readFileSync(join(ROOT, "docs", "deploy.md"), "utf8");
  test("maps every variable the echo server reads, and names every flag the manifests give the proxy", () => {
    expect([...ECHO_VARIABLES].filter((name) => !docs.includes(`\`${name}\``))).toEqual([]);
    const proxyFlags = [
      ...container(deploymentRunning("tcp-proxy")).args,
      ...(compose.services.proxy.command as string[]),
    ].filter((arg: string) => arg.startsWith("--"));
    expect([...new Set(proxyFlags)].filter((flag) => !docs.includes(`\`${flag}`))).toEqual([]);
  });
});
