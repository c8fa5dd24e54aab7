#!/usr/bin/env bun
// Makes deploy/schemas/kubernetes.json from Kubernetes' OpenAPI (swagger 2.0) document: only the kinds deploy/
// uses and the definitions they reach, as JSON Schema 2020-12, the way yannh/kubernetes-json-schema's "strict"
// schemas (what kubeconform validates with) are made from the same document:
//   - an object with properties accepts no other property (a misspelt field fails, as `kubectl --validate` would);
//   - IntOrString is a string or an integer, Quantity a string or a number;
//   - apiVersion and kind must be the kind's own, and are required;
//   - descriptions, formats and x-kubernetes-* annotations are dropped (size; the validator needs none of them).
// Usage: bun deploy/schemas/make-kubernetes-schema.ts SWAGGER.json VERSION > deploy/schemas/kubernetes.json

const KINDS = [
  "io.k8s.api.core.v1.Namespace",
  "io.k8s.api.core.v1.Service",
  "io.k8s.api.apps.v1.Deployment",
  "io.k8s.api.policy.v1.PodDisruptionBudget",
  "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler",
];

type Schema = { [key: string]: unknown };

const [swaggerFile, version] = Bun.argv.slice(2);
if (!swaggerFile || !version) {
  console.error("usage: bun deploy/schemas/make-kubernetes-schema.ts SWAGGER.json VERSION");
  process.exit(2);
}
const definitions = (await Bun.file(swaggerFile).json()).definitions as Record<string, Schema>;

const SPECIAL: Record<string, Schema> = {
  "io.k8s.apimachinery.pkg.util.intstr.IntOrString": { oneOf: [{ type: "string" }, { type: "integer" }] },
  "io.k8s.apimachinery.pkg.api.resource.Quantity": { oneOf: [{ type: "string" }, { type: "number" }] },
};

/** `schema` converted, with every definition it refers to added to `needed`. */
function convert(schema: unknown, needed: Set<string>): unknown {
  if (Array.isArray(schema)) return schema.map((item) => convert(item, needed));
  if (typeof schema !== "object" || schema === null) return schema;
  const out: Schema = {};
  for (const [key, value] of Object.entries(schema)) {
    if (key === "description" || key === "format" || key.startsWith("x-kubernetes-")) continue;
    if (key === "$ref" && typeof value === "string") {
      const name = value.replace("#/definitions/", "");
      needed.add(name);
      out.$ref = `#/$defs/${name}`;
      continue;
    }
    out[key] = convert(value, needed);
  }
  if (out.properties !== undefined && out.additionalProperties === undefined) out.additionalProperties = false;
  return out;
}

const $defs: Record<string, unknown> = {};
const needed = new Set(KINDS);
const done = new Set<string>();
while (done.size < needed.size) {
  for (const name of [...needed].filter((n) => !done.has(n))) {
    done.add(name);
    const definition = definitions[name];
    if (definition === undefined) throw new Error(`${name} is not in ${swaggerFile}`);
    const schema = (SPECIAL[name] ?? convert(definition, needed)) as Schema;
    const [gvk] = (definition["x-kubernetes-group-version-kind"] ?? []) as Array<Record<string, string>>;
    if (KINDS.includes(name) && gvk !== undefined) {
      const properties = schema.properties as Record<string, Schema>;
      properties.apiVersion = { type: "string", enum: [gvk.group ? `${gvk.group}/${gvk.version}` : gvk.version] };
      properties.kind = { type: "string", enum: [gvk.kind] };
      schema.required = [...new Set([...((schema.required as string[]) ?? []), "apiVersion", "kind"])];
    }
    $defs[name] = schema;
  }
}

const sorted = Object.fromEntries(Object.entries($defs).sort(([a], [b]) => a.localeCompare(b)));
const document = {
  $schema: "https://json-schema.org/draft/2020-12/schema",
  $id: "kubernetes.json",
  title: `Kubernetes ${version}: ${KINDS.map((k) => k.split(".").at(-1)).join(", ")} (strict)`,
  $defs: sorted,
};
console.log(JSON.stringify(document));
