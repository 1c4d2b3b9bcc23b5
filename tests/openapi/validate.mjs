#!/usr/bin/env node
// tests/openapi/validate.mjs - checks the OpenAPI document of the REST API
// (gateway/openapi.json). Run by ctest as `openapi_valid`; see docs/TESTING.md.
//
//   node tests/openapi/validate.mjs [FILE] [--url URL] [--routes ROUTES]
//
//   FILE           the document (default: gateway/openapi.json of this repository)
//   --url URL      also fetch the served document (http://127.0.0.1:PORT/api/v1/openapi.json)
//                  and require it to equal FILE as JSON
//   --routes FILE  lines "METHOD /path/{param}" as the gateway registers them (prefix
//                  /api/v1 included; blank lines and lines starting with # ignored):
//                  every route needs an operation and every operation a route
//
// Checks on FILE: JSON; `openapi` 3.1.x; SwaggerParser.validate (the OpenAPI 3.1 schema,
// every $ref resolves); then, as SwaggerParser does not check these for 3.x: operationId
// on every operation, camelCase and unique; path template parameters and declared path
// parameters agree; every operation has a 2xx answer; 429 answers carry Retry-After;
// security requirements name declared schemes; every schema compiles under Ajv's strict
// mode (no unknown keyword or format, `required` names declared properties); every
// example validates against its schema.
//
// Exit status: 0 all good, 1 a check failed, 2 usage or environment problem (node too
// old, node_modules missing: run tests/run, or npm ci --prefix tests/openapi).
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "..", "..");
const METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

const failures = [];
const fail = (msg) => failures.push(msg);
const say = (msg) => console.log(`openapi: ${msg}`);
function die(msg, code = 2) {
    console.error(`openapi: error: ${msg}`);
    process.exit(code);
}

// -- arguments and environment ----------------------------------------------------------

function parseArgs(argv) {
    const a = { file: null, url: null, routes: null };
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i];
        const value = () => {
            if (i + 1 >= argv.length) die(`${arg} needs a value`);
            return argv[++i];
        };
        if (arg === "--url") a.url = value();
        else if (arg === "--routes") a.routes = value();
        else if (arg === "-h" || arg === "--help") {
            console.log("usage: node tests/openapi/validate.mjs [FILE] [--url URL] [--routes FILE]");
            process.exit(0);
        } else if (arg.startsWith("-")) die(`unknown option ${arg}`);
        else if (a.file) die(`one document at a time (got ${a.file} and ${arg})`);
        else a.file = arg;
    }
    a.file = a.file || path.join(repo, "gateway", "openapi.json");
    return a;
}

function loadDeps() {
    const major = Number(process.versions.node.split(".")[0]);
    if (major < 18) die(`node ${process.versions.node} is too old: 18 or later is needed`);
    const req = createRequire(path.join(here, "package.json"));
    try {
        const SwaggerParser = req("@apidevtools/swagger-parser");
        // Ajv as SwaggerParser itself resolves it: no second copy to keep in step.
        const fromParser = createRequire(req.resolve("@apidevtools/swagger-parser"));
        const ajvMod = fromParser("ajv/dist/2020");
        return { SwaggerParser, Ajv2020: ajvMod.default || ajvMod };
    } catch (e) {
        die(
            `cannot load @apidevtools/swagger-parser from ${path.join(here, "node_modules")} (${e.code || e.message}).\n` +
                "  Run tests/run (it installs nodejs and npm and runs npm ci), or: npm ci --prefix tests/openapi",
        );
    }
}

// -- helpers ------------------------------------------------------------------------------

function readJson(file) {
    let text;
    try {
        text = readFileSync(file, "utf8");
    } catch (e) {
        die(`cannot read ${file}: ${e.message}`);
    }
    try {
        return { text, doc: JSON.parse(text) };
    } catch (e) {
        fail(`${file} is not valid JSON: ${e.message}`);
        return { text, doc: null };
    }
}

// resolve(doc, "#/a/b") -> the value, or undefined (JSON pointer, RFC 6901).
function resolve(doc, ref) {
    if (typeof ref !== "string" || !ref.startsWith("#")) return undefined;
    let v = doc;
    for (const raw of ref.slice(1).split("/").slice(1)) {
        const key = decodeURIComponent(raw).replace(/~1/g, "/").replace(/~0/g, "~");
        if (v === null || typeof v !== "object" || !(key in v)) return undefined;
        v = v[key];
    }
    return v;
}

// deref(doc, obj) -> obj with a top-level $ref followed (Reference Objects).
function deref(doc, obj) {
    let seen = 0;
    while (obj && typeof obj === "object" && typeof obj.$ref === "string" && seen++ < 16) obj = resolve(doc, obj.$ref);
    return obj;
}

function* walk(value, where = "#") {
    if (value === null || typeof value !== "object") return;
    yield [value, where];
    for (const [k, v] of Object.entries(value)) yield* walk(v, `${where}/${String(k).replace(/~/g, "~0").replace(/\//g, "~1")}`);
}

function* operations(doc) {
    for (const [p, item] of Object.entries(doc.paths || {})) {
        if (!item || typeof item !== "object") continue;
        for (const m of METHODS) if (item[m]) yield { path: p, method: m, item, op: item[m] };
    }
}

const opName = (o) => `${o.method.toUpperCase()} ${o.path}`;
const normPath = (p) => (p.length > 1 ? p.replace(/\/+$/, "") : p).replace(/\{[^}]*\}/g, "{}");

// -- checks ---------------------------------------------------------------------------------

function checkRefs(doc) {
    for (const [node, where] of walk(doc))
        if (typeof node.$ref === "string" && resolve(doc, node.$ref) === undefined)
            fail(`${where}: $ref ${node.$ref} points at nothing`);
}

function checkOperations(doc) {
    const ids = new Map();
    const schemes = doc.components?.securitySchemes || {};
    const checkSecurity = (sec, where) => {
        for (const req of sec || []) for (const name of Object.keys(req)) if (!schemes[name]) fail(`${where}: security scheme '${name}' is not in components.securitySchemes`);
    };
    checkSecurity(doc.security, "security");
    let count = 0;
    for (const o of operations(doc)) {
        count++;
        const name = opName(o);
        const id = o.op.operationId;
        if (typeof id !== "string" || !id) fail(`${name}: no operationId`);
        else {
            if (!/^[a-z][a-zA-Z0-9]*$/.test(id)) fail(`${name}: operationId '${id}' is not camelCase`);
            if (ids.has(id)) fail(`${name}: operationId '${id}' is also used by ${ids.get(id)}`);
            ids.set(id, name);
        }
        checkSecurity(o.op.security, name);

        // Parameters: operation-level ones override path-level ones of the same name+in.
        const params = new Map();
        for (const [level, list] of [["path item", o.item.parameters], ["operation", o.op.parameters]]) {
            const seen = new Set();
            for (const raw of list || []) {
                const prm = deref(doc, raw);
                if (!prm) continue; // reported by checkRefs
                const key = `${prm.in}:${prm.name}`;
                if (seen.has(key)) fail(`${name}: ${level} declares parameter ${prm.name} (${prm.in}) twice`);
                seen.add(key);
                params.set(key, prm);
            }
        }
        const inTemplate = new Set([...o.path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]));
        const declared = new Set([...params.values()].filter((p) => p.in === "path").map((p) => p.name));
        for (const n of inTemplate) if (!declared.has(n)) fail(`${name}: path parameter {${n}} is not declared`);
        for (const n of declared) if (!inTemplate.has(n)) fail(`${name}: declares path parameter '${n}' that is not in the path`);
        for (const p of params.values()) if (p.in === "path" && p.required !== true) fail(`${name}: path parameter '${p.name}' must be required: true`);

        const statuses = Object.keys(o.op.responses || {});
        if (!statuses.some((s) => /^2(\d\d|XX)$/.test(s))) fail(`${name}: no 2xx response`);
        for (const s of statuses) {
            const r = deref(doc, o.op.responses[s]);
            if (s === "429" && r && !Object.keys(r.headers || {}).some((h) => h.toLowerCase() === "retry-after"))
                fail(`${name}: the 429 response has no Retry-After header`);
        }
    }
    if (count === 0) fail("the document has no operations");
    return count;
}

// Every schema of the document under Ajv (JSON Schema 2020-12, the dialect of OpenAPI
// 3.1) in strict mode, and every example against its schema.
function checkSchemas(doc, Ajv2020) {
    const BASE = "https://chorus.invalid/openapi-components.json";
    const rewrite = (schema) =>
        JSON.parse(JSON.stringify(schema), (k, v) =>
            k === "$ref" && typeof v === "string" && v.startsWith("#/components/schemas/") ? `${BASE}#/$defs/${v.slice(21)}` : v,
        );
    const ajv = new Ajv2020({ strict: true, allowUnionTypes: true, allErrors: true, validateFormats: true });
    ajv.addVocabulary(["discriminator", "xml", "externalDocs", "example"]); // OpenAPI's own keywords
    const dateTime = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/i;
    ajv.addFormat("int32", { type: "number", validate: (n) => Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31 });
    ajv.addFormat("int64", { type: "number", validate: (n) => Number.isInteger(n) });
    ajv.addFormat("float", { type: "number", validate: () => true });
    ajv.addFormat("double", { type: "number", validate: () => true });
    ajv.addFormat("date-time", (s) => dateTime.test(s) && !Number.isNaN(Date.parse(s)));
    ajv.addFormat("email", (s) => /^[^\s@]+@[^\s@]+$/.test(s));
    ajv.addFormat("password", true);
    ajv.addFormat("uri", (s) => /^[a-z][a-z0-9+.-]*:/i.test(s));

    const components = doc.components?.schemas || {};
    try {
        ajv.addSchema({ $id: BASE, $defs: rewrite(components) });
    } catch (e) {
        fail(`components.schemas: ${e.message}`);
        return;
    }
    const compile = (schema, where) => {
        try {
            return ajv.compile(rewrite(schema));
        } catch (e) {
            fail(`${where}: schema does not compile: ${e.message}`);
            return null;
        }
    };
    const checkExample = (validate, value, where) => {
        if (validate && !validate(value)) fail(`${where}: example does not match its schema: ${ajv.errorsText(validate.errors)}`);
    };

    // Component schemas (and the `examples` of any schema inside them).
    for (const name of Object.keys(components)) {
        const where = `#/components/schemas/${name}`;
        const v = compile({ $ref: `#/components/schemas/${name}` }, where);
        if (!v) continue;
        for (const [node, at] of walk(components[name], where))
            if (Array.isArray(node.examples) && (node.type || node.$ref || node.allOf || node.properties)) {
                const sub = at === where ? v : compile(node, at);
                node.examples.forEach((ex, i) => checkExample(sub, ex, `${at}/examples/${i}`));
            }
    }

    // Schemas in parameters, headers and media types, with their examples.
    const exampleValues = (holder) => {
        const out = [];
        if ("example" in holder) out.push(["example", holder.example]);
        for (const [k, ex] of Object.entries(holder.examples || {})) {
            const e = deref(doc, ex);
            if (e && "value" in e) out.push([`examples/${k}`, e.value]);
        }
        return out;
    };
    for (const [node, where] of walk(doc)) {
        if (where.startsWith("#/components/schemas")) continue;
        const isParamOrHeader = node.schema && (typeof node.in === "string" || /\/headers\/[^/]+$/.test(where));
        const isMedia = node.schema && /\/content\/[^/]+$/.test(where);
        if (!isParamOrHeader && !isMedia) continue;
        const v = compile(node.schema, `${where}/schema`);
        for (const [k, value] of exampleValues(node)) checkExample(v, value, `${where}/${k}`);
    }
}

// -- the served document and the gateway's routes ------------------------------------------

function get(url) {
    return new Promise((ok, ko) => {
        const lib = url.startsWith("https:") ? https : http;
        const req = lib.get(url, { timeout: 10000 }, (res) => {
            const chunks = [];
            res.on("data", (c) => chunks.push(c));
            res.on("end", () => ok({ status: res.statusCode, type: res.headers["content-type"] || "", body: Buffer.concat(chunks).toString("utf8") }));
        });
        req.on("timeout", () => req.destroy(new Error("timed out after 10 s")));
        req.on("error", ko);
    });
}

async function checkServed(url, file, text, doc) {
    let res;
    try {
        res = await get(url);
    } catch (e) {
        fail(`--url ${url}: ${e.message}`);
        return;
    }
    if (res.status !== 200) return fail(`--url ${url}: status ${res.status}, expected 200`);
    if (!/^application\/json\b/i.test(res.type)) fail(`--url ${url}: Content-Type '${res.type}', expected application/json`);
    let served;
    try {
        served = JSON.parse(res.body);
    } catch (e) {
        return fail(`--url ${url}: the body is not JSON: ${e.message}`);
    }
    if (!isDeepStrictEqual(served, doc)) {
        const diff = [];
        const cmp = (a, b, at) => {
            if (diff.length >= 10) return;
            if (isDeepStrictEqual(a, b)) return;
            if (a && b && typeof a === "object" && typeof b === "object" && Array.isArray(a) === Array.isArray(b)) {
                for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) cmp(a[k], b[k], `${at}/${k}`);
            } else diff.push(at || "/");
        };
        cmp(served, doc, "");
        fail(`--url ${url}: the served document differs from ${file} at ${diff.join(", ")}${diff.length >= 10 ? ", ..." : ""}`);
    } else say(`served ${url} equals ${file}${res.body === text ? " (byte for byte)" : " (as JSON; bytes differ)"}`);
}

function checkRoutes(routesFile, doc) {
    let text;
    try {
        text = readFileSync(routesFile, "utf8");
    } catch (e) {
        return fail(`--routes: cannot read ${routesFile}: ${e.message}`);
    }
    const routes = new Map(); // "GET /api/v1/x/{}" -> "GET /api/v1/x/{id}" as written
    text.split("\n").forEach((line, i) => {
        line = line.trim();
        if (!line || line.startsWith("#")) return;
        const m = /^([A-Za-z]+)\s+(\/\S*)$/.exec(line);
        if (!m) return fail(`${routesFile}:${i + 1}: expected "METHOD /path", got '${line}'`);
        routes.set(`${m[1].toUpperCase()} ${normPath(m[2])}`, `${m[1].toUpperCase()} ${m[2]}`);
    });
    const serverPath = (servers) => {
        const u = servers && servers[0] && servers[0].url;
        return u ? new URL(u, "http://server.invalid").pathname.replace(/\/+$/, "") : "";
    };
    const documented = new Map();
    for (const o of operations(doc)) {
        const full = serverPath(o.item.servers || doc.servers) + o.path;
        documented.set(`${o.method.toUpperCase()} ${normPath(full)}`, { full: `${o.method.toUpperCase()} ${full}`, id: o.op.operationId });
    }
    let missingOps = 0;
    let missingRoutes = 0;
    for (const [key, asWritten] of routes)
        if (!documented.has(key)) {
            fail(`route without an operation in the document: ${asWritten}`);
            missingOps++;
        } else if (documented.get(key).full !== asWritten)
            say(`note: ${asWritten} is documented as ${documented.get(key).full} (parameter names differ)`);
    for (const [key, d] of documented)
        if (!routes.has(key)) {
            fail(`operation without a route in ${routesFile}: ${d.id} (${d.full})`);
            missingRoutes++;
        }
    if (!missingOps && !missingRoutes) say(`routes: all ${routes.size} routes of ${routesFile} have an operation and all ${documented.size} operations a route`);
}

// -- main -----------------------------------------------------------------------------------

const args = parseArgs(process.argv.slice(2));
const { SwaggerParser, Ajv2020 } = loadDeps();
const { text, doc } = readJson(args.file);
const rel = path.relative(process.cwd(), args.file);
const shown = rel && !rel.startsWith("..") ? rel : args.file;

if (doc) {
    if (typeof doc.openapi !== "string" || !/^3\.1\.\d+$/.test(doc.openapi)) fail(`'openapi' is ${JSON.stringify(doc.openapi)}, expected 3.1.x`);
    let parsed = false;
    try {
        await SwaggerParser.validate(structuredClone(doc));
        parsed = true;
    } catch (e) {
        const lines = String(e.message).trimEnd().split("\n");
        const more = lines.length > 40 ? `\n  ... (${lines.length - 40} more lines)` : "";
        fail(`SwaggerParser: ${lines.slice(0, 40).join("\n")}${more}`);
    }
    checkRefs(doc);
    const n = checkOperations(doc);
    checkSchemas(doc, Ajv2020);
    if (parsed) say(`SwaggerParser.validate: ${shown} is a valid OpenAPI ${doc.openapi} document (${doc.info?.title} ${doc.info?.version})`);
    say(`${n} operations in ${Object.keys(doc.paths || {}).length} paths, ${Object.keys(doc.components?.schemas || {}).length} schemas`);
    if (args.url) await checkServed(args.url, shown, text, doc);
    if (args.routes) checkRoutes(args.routes, doc);
}

if (failures.length) {
    for (const f of failures) console.error(`openapi: FAIL: ${f}`);
    console.error(`openapi: ${failures.length} problem(s) in ${shown}`);
    process.exit(1);
}
say(`OK: ${shown}`);
