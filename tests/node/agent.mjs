// Interop driver for @elastic/opamp-client-node, run by
// tests/integration/test_node_client_interop.py.
//
//   node agent.mjs '<json options>'
//
// Options (all but `endpoint` optional):
//   endpoint            full URL, e.g. http://127.0.0.1:4320/v1/opamp
//   serviceName         identifying attribute service.name (default "node-interop")
//   heartbeatSeconds    client option heartbeatIntervalSeconds (default 1; the client's
//                       minimum is 0.1, values below it fall back to 30 s)
//   configStatus        what to report for each new remote config: "APPLIED" (default),
//                       "FAILED" or "none" (report nothing)
//
// stdout: one JSON object per line, each with an "event" key:
//   {"event":"started","instance_uid":hex,"client":"name/version"}
//   {"event":"sent","seq":n,"full_state":bool,"has_status":bool,"flags":n,
//    "server_capabilities":n,"time_ms":epoch ms}          (after every successful exchange)
//   {"event":"send_failed","seq":n,"error":str}
//   {"event":"remote_config","hash":hex,"files":{name:{"content_type":s,"body":parsed|str}}}
//   {"event":"status_reported","hash":hex,"status":"APPLIED"|"FAILED"}
//   {"event":"shutdown"}   (after client.shutdown() resolved; the process then exits 0)
// stdin: one JSON command per line: {"cmd":"shutdown"}. EOF on stdin also shuts down.
// stderr: the client's warn/error log lines, for debugging.

import {channel} from 'node:diagnostics_channel';
import {createInterface} from 'node:readline';

import opamp from '@elastic/opamp-client-node';

const {
    createOpAMPClient,
    AgentCapabilities,
    RemoteConfigStatuses,
    DIAG_CH_SEND_SUCCESS,
    DIAG_CH_SEND_FAIL,
    USER_AGENT,
} = opamp;

const opts = JSON.parse(process.argv[2] ?? '{}');
if (!opts.endpoint) {
    process.stderr.write('usage: node agent.mjs \'{"endpoint": "http://..."}\'\n');
    process.exit(2);
}
const configStatus = opts.configStatus ?? 'APPLIED';

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}

function hex(bytes) {
    return Buffer.from(bytes ?? []).toString('hex');
}

// A pino-like logger: only warn and above, to stderr.
const log = {
    trace() {},
    debug() {},
    info() {},
    warn: (...args) => process.stderr.write(`WARN ${fmt(args)}\n`),
    error: (...args) => process.stderr.write(`ERROR ${fmt(args)}\n`),
};
function fmt(args) {
    return args
        .map((a) => (a instanceof Error ? a.stack : typeof a === 'string' ? a : safeJson(a)))
        .join(' ');
}
function safeJson(v) {
    try {
        return JSON.stringify(v, (_k, x) =>
            typeof x === 'bigint' ? x.toString() : x instanceof Error ? String(x) : x
        );
    } catch {
        return String(v);
    }
}

function decodeFile(file) {
    const text = new TextDecoder().decode(file.body);
    if (file.contentType === 'application/json' || file.contentType === 'text/json') {
        try {
            return JSON.parse(text);
        } catch {
            return text;
        }
    }
    return text;
}

let lastHandledHash = null;

const client = createOpAMPClient({
    endpoint: opts.endpoint,
    log,
    capabilities: BigInt(
        AgentCapabilities.AgentCapabilities_AcceptsRemoteConfig |
            AgentCapabilities.AgentCapabilities_ReportsRemoteConfig
    ),
    heartbeatIntervalSeconds: opts.heartbeatSeconds ?? 1,
    headersTimeout: 5000,
    bodyTimeout: 5000,
    diagEnabled: true,
    onMessage: ({remoteConfig}) => {
        if (!remoteConfig) {
            return;
        }
        const hash = hex(remoteConfig.configHash);
        const files = {};
        for (const [name, file] of Object.entries(remoteConfig.config?.configMap ?? {})) {
            files[name] = {content_type: file.contentType, body: decodeFile(file)};
        }
        emit({event: 'remote_config', hash, files});
        // The README asks hosts to dedupe on configHash: onMessage may see the same config again.
        if (hash === lastHandledHash || configStatus === 'none') {
            return;
        }
        lastHandledHash = hash;
        const status =
            configStatus === 'FAILED'
                ? RemoteConfigStatuses.RemoteConfigStatuses_FAILED
                : RemoteConfigStatuses.RemoteConfigStatuses_APPLIED;
        client.setRemoteConfigStatus({
            lastRemoteConfigHash: remoteConfig.configHash,
            status,
            errorMessage: configStatus === 'FAILED' ? 'rejected by node driver' : '',
        });
        emit({event: 'status_reported', hash, status: configStatus});
    },
});

channel(DIAG_CH_SEND_SUCCESS).subscribe((m) => {
    emit({
        event: 'sent',
        seq: Number(m.a2s.sequenceNum),
        full_state: Boolean(m.a2s.agentDescription),
        has_status: Boolean(m.a2s.remoteConfigStatus),
        flags: Number(m.s2a.flags),
        server_capabilities: Number(m.s2a.capabilities),
        time_ms: m.time,
    });
});
channel(DIAG_CH_SEND_FAIL).subscribe((m) => {
    emit({event: 'send_failed', seq: Number(m.a2s.sequenceNum), error: String(m.err)});
});

client.setAgentDescription({
    identifyingAttributes: {'service.name': opts.serviceName ?? 'node-interop'},
    nonIdentifyingAttributes: {'host.name': 'node-test-host'},
});
client.start();
emit({
    event: 'started',
    instance_uid: hex(client.getInstanceUid()),
    client: USER_AGENT,
});

let stopping = false;
async function shutdown() {
    if (stopping) {
        return;
    }
    stopping = true;
    try {
        await client.shutdown();
    } catch (err) {
        log.error(err);
    }
    emit({event: 'shutdown'});
    process.exit(0);
}

// The client's timers are unref()ed; this readline on stdin is what keeps the process alive.
const rl = createInterface({input: process.stdin});
rl.on('line', (line) => {
    if (!line.trim()) {
        return;
    }
    let cmd;
    try {
        cmd = JSON.parse(line).cmd;
    } catch (err) {
        log.error(`bad command line: ${line}`);
        return;
    }
    if (cmd === 'shutdown') {
        shutdown();
    } else {
        log.error(`unknown command: ${cmd}`);
    }
});
rl.on('close', shutdown);
