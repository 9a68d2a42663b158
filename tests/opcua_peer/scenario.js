// Runs an OPC UA client scenario against a server with node-opcua (an
// implementation independent of the server's asyncua) and reports each step.
//
//   node scenario.js PLAN.json
//
// The plan names connections ("sessions") and a list of steps. Each step's
// result is printed as one line "@@ {json}" on stdout (node-opcua prints its
// own warnings there too; the test reads only the "@@" lines). A "wait" step
// prints its label and blocks until a line arrives on stdin, so the test can
// act (ingest readings, report a finding) while subscriptions are live.
// "{ns}" in a node id is replaced by the index of the plan's namespace URI.
"use strict";

const fs = require("fs");
const path = require("path");
const readline = require("readline");
const {
    OPCUAClient, MessageSecurityMode, SecurityPolicy, UserTokenType, AttributeIds, ClientSubscription,
    ClientMonitoredItem, TimestampsToReturn, constructEventFilter, DataType, BrowseDirection, resolveNodeId,
} = require("node-opcua-client");
const { OPCUACertificateManager } = require("node-opcua-certificate-manager");

const plan = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const sessions = {};
const subscriptions = {};
let ns = null;

const lines = readline.createInterface({ input: process.stdin });
const pending = [];
const waiting = [];
lines.on("line", (line) => (waiting.length ? waiting.shift()(line) : pending.push(line)));
const nextLine = () => new Promise((resolve) => (pending.length ? resolve(pending.shift()) : waiting.push(resolve)));

function report(obj) {
    process.stdout.write("@@ " + JSON.stringify(obj, (k, v) => (typeof v === "bigint" ? Number(v) : v)) + "\n");
}

function nodeId(text) {
    return resolveNodeId(ns === null ? text : text.split("{ns}").join(String(ns)));
}

function statusName(err) {
    const match = /(Bad\w+)/.exec(String((err && (err.message || err)) || ""));
    return match ? match[1] : String((err && err.message) || err);
}

function plain(value) {
    if (value === null || value === undefined) return null;
    if (Array.isArray(value)) return value.map(plain);
    if (value instanceof Date) return value.toISOString();
    if (typeof value === "bigint") return Number(value);
    if (typeof value === "object" && typeof value.toJSON === "function") return value.toJSON();
    if (typeof value === "object" && value.constructor && value.constructor.name === "Array") return value;
    if (ArrayBuffer.isView(value)) return Array.from(value);
    return value;
}

function variantValue(v) {
    // node-opcua gives 64-bit integers as [high, low] 32-bit words.
    if ((v.dataType === DataType.Int64 || v.dataType === DataType.UInt64) && Array.isArray(v.value)
        && v.value.length === 2 && typeof v.value[0] === "number") {
        return v.value[0] * 4294967296 + v.value[1];
    }
    return plain(v.value);
}

function dataValue(dv) {
    return {
        value: variantValue(dv.value),
        dataType: DataType[dv.value.dataType],
        status: dv.statusCode.name,
        sourceTimestamp: dv.sourceTimestamp ? dv.sourceTimestamp.toISOString() : null,
    };
}

async function certificateManager(conf) {
    const manager = new OPCUACertificateManager({
        rootFolder: conf.pki, automaticallyAcceptUnknownCertificate: false,
    });
    await manager.initialize();
    if (conf.trustServer) {
        // Strict: the server's certificate is trusted because the test put it here, not on first use.
        const target = path.join(conf.pki, "trusted", "certs", path.basename(conf.trustServer));
        fs.mkdirSync(path.dirname(target), { recursive: true });
        fs.copyFileSync(conf.trustServer, target);
    }
    return manager;
}

async function connect(name) {
    const conf = plan.sessions[name];
    const options = {
        applicationName: conf.applicationName || "node-opcua test client",
        applicationUri: conf.applicationUri,
        securityMode: MessageSecurityMode[conf.mode || "None"],
        securityPolicy: SecurityPolicy[conf.policy || "None"],
        endpointMustExist: false,
        connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 },
        requestedSessionTimeout: 60000,
        keepSessionAlive: false,
    };
    if (conf.certificate) {
        options.certificateFile = conf.certificate;
        options.privateKeyFile = conf.privateKey;
        options.clientCertificateManager = await certificateManager(conf);
    }
    const client = OPCUAClient.create(options);
    sessions[name] = { client, session: null };
    await client.connect(plan.endpoint);
    const identity = conf.user
        ? { type: UserTokenType.UserName, userName: conf.user, password: conf.password }
        : { type: UserTokenType.Anonymous };
    sessions[name].session = await client.createSession(identity);
    return { session: name };
}

async function close(name) {
    const s = sessions[name];
    if (!s) return {};
    if (s.session) await s.session.close().catch(() => undefined);
    await s.client.disconnect().catch(() => undefined);
    delete sessions[name];
    return {};
}

function session(name) {
    const s = sessions[name];
    if (!s || !s.session) throw new Error(`no session ${name}`);
    return s.session;
}

const ops = {
    async endpoints(step) {
        const client = OPCUAClient.create({ endpointMustExist: false, connectionStrategy: { maxRetry: 0 } });
        await client.connect(plan.endpoint);
        const endpoints = await client.getEndpoints();
        await client.disconnect();
        return {
            endpoints: endpoints.map((e) => ({
                policy: e.securityPolicyUri.split("#")[1],
                mode: MessageSecurityMode[e.securityMode],
                tokens: e.userIdentityTokens.map((t) => UserTokenType[t.tokenType]),
                applicationUri: e.server.applicationUri,
                certificate: e.serverCertificate ? Buffer.from(e.serverCertificate).toString("base64") : null,
            })),
        };
    },
    async connect(step) {
        return connect(step.session);
    },
    async close(step) {
        return close(step.session);
    },
    async namespace(step) {
        const dv = await session(step.session).read({ nodeId: "i=2255", attributeId: AttributeIds.Value });
        ns = dv.value.value.indexOf(step.uri);
        return { index: ns, array: dv.value.value };
    },
    async browse(step) {
        const result = await session(step.session).browse({
            nodeId: nodeId(step.node),
            referenceTypeId: step.referenceType || "HierarchicalReferences",
            browseDirection: BrowseDirection[step.direction || "Forward"],
            includeSubtypes: true,
            nodeClassMask: 0,
            resultMask: 63,
        });
        return {
            status: result.statusCode.name,
            references: result.references.map((r) => ({
                nodeId: r.nodeId.toString(),
                browseName: r.browseName.name,
                browseNamespace: r.browseName.namespaceIndex,
                displayName: r.displayName.text,
                typeDefinition: r.typeDefinition.toString(),
                nodeClass: r.nodeClass,
                isForward: r.isForward,
            })),
        };
    },
    async translate(step) {
        const result = await session(step.session).translateBrowsePath({
            startingNode: nodeId(step.start),
            relativePath: {
                elements: step.path.map((name) => ({
                    referenceTypeId: resolveNodeId("i=33"), isInverse: false, includeSubtypes: true,
                    targetName: { namespaceIndex: name.startsWith("0:") ? 0 : ns, name: name.replace(/^0:/, "") },
                })),
            },
        });
        return { status: result.statusCode.name, targets: (result.targets || []).map((t) => t.targetId.toString()) };
    },
    async read(step) {
        const items = step.nodes.map((n) => ({ nodeId: nodeId(n.node), attributeId: AttributeIds[n.attribute || "Value"] }));
        const values = await session(step.session).read(items);
        return { values: values.map(dataValue) };
    },
    async write(step) {
        const status = await session(step.session).write({
            nodeId: nodeId(step.node), attributeId: AttributeIds.Value,
            value: { value: { dataType: DataType[step.dataType], value: step.value } },
        });
        return { status: status.name };
    },
    async call(step) {
        const result = await session(step.session).call({
            objectId: nodeId(step.object), methodId: nodeId(step.method),
            inputArguments: (step.args || []).map((a) => ({ dataType: DataType.String, value: a })),
        });
        return {
            status: result.statusCode.name,
            outputs: (result.outputArguments || []).map(variantValue),
            inputResults: (result.inputArgumentResults || []).map((s) => s.name),
        };
    },
    async subscribe(step) {
        const sub = await ClientSubscription.create(session(step.session), {
            requestedPublishingInterval: 100, requestedLifetimeCount: 600, requestedMaxKeepAliveCount: 20,
            maxNotificationsPerPublish: 0, publishingEnabled: true, priority: 1,
        });
        const record = { changes: [], events: [] };
        subscriptions[step.name] = record;
        for (const n of step.nodes || []) {
            const item = await ClientMonitoredItem.create(sub, { nodeId: nodeId(n), attributeId: AttributeIds.Value },
                { samplingInterval: 0, discardOldest: true, queueSize: 100 }, TimestampsToReturn.Both);
            item.on("changed", (dv) => record.changes.push({ node: n, ...dataValue(dv) }));
        }
        if (step.events) {
            const fields = step.events;
            const item = await ClientMonitoredItem.create(sub, { nodeId: nodeId(step.eventSource || "i=2253"),
                attributeId: AttributeIds.EventNotifier },
            { samplingInterval: 0, discardOldest: true, queueSize: 100, filter: constructEventFilter(fields) },
            TimestampsToReturn.Both);
            item.on("changed", (values) => {
                const event = {};
                fields.forEach((f, i) => (event[f] = variantValue(values[i])));
                record.events.push(event);
            });
        }
        return { name: step.name };
    },
    async wait(step) {
        report({ op: "wait", label: step.label });
        const line = await nextLine();
        return { got: line };
    },
    async collect(step) {
        const record = subscriptions[step.name];
        const deadline = Date.now() + (step.timeout || 10000);
        const enough = () => step.until.every((u) => record[u.kind].some((c) => Object.entries(u.match || {})
            .every(([k, v]) => c[k] === v)));
        while (!enough() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
        return { changes: record.changes, events: record.events, complete: enough() };
    },
};

async function main() {
    for (const [i, step] of plan.steps.entries()) {
        const started = Date.now();
        try {
            const result = await ops[step.op](step);
            report({ step: i, op: step.op, id: step.id || null, ok: true, ms: Date.now() - started, ...result });
        } catch (err) {
            report({ step: i, op: step.op, id: step.id || null, ok: false, ms: Date.now() - started,
                     error: statusName(err), message: String((err && err.message) || err) });
        }
    }
    for (const name of Object.keys(sessions)) await close(name);
    lines.close();
}

main().then(() => process.exit(0), (err) => {
    report({ op: "fatal", ok: false, error: String(err && err.stack) });
    process.exit(1);
});
