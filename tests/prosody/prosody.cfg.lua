-- Prosody for im-layers' XMPP adapter tests: loopback only, plaintext (no TLS on 127.0.0.1),
-- every path under $IM_PROSODY_DIR so each run starts from fresh data. Started and stopped by
-- tests/prosody/prosody.sh (which sets the variables below).
local dir = os.getenv("IM_PROSODY_DIR") or "/tmp/im-prosody"
local port = tonumber(os.getenv("IM_PROSODY_PORT") or "5222")

-- CI runs as root.
run_as_root = true
daemonize = false
pidfile = dir .. "/prosody.pid"
data_path = dir .. "/data"
certificates = dir .. "/certs"
log = { { levels = { min = "info" }, to = "file", filename = dir .. "/prosody.log" } }

admins = { }
modules_enabled = {
    "roster"; "saslauth"; "disco"; "ping"; "mam"; "offline"; "smacks"; "posix";
    -- XEP-0280 for the adapter's multi_device mode (a copy of my sends on my other devices).
    "carbons";
}
modules_disabled = { "s2s"; "tls"; "http"; "bosh"; "websocket"; }

c2s_ports = { port }
c2s_interfaces = { "127.0.0.1" }
s2s_ports = { }
component_ports = { }
http_ports = { }
https_ports = { }

-- Plaintext login on loopback (there is no certificate here).
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"

-- MAM: keep everything for the test run, archive every chat message.
archive_expires_after = "never"
default_archive_policy = true
max_archive_query_results = 100

-- A dropped socket is not kept "hibernating" (messages would queue there, not offline).
smacks_hibernation_time = 1

-- Tests send bursts; no rate limits.
limits = { c2s = { rate = "100mb/s" } }

VirtualHost "im.test"
