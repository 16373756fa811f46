#!/usr/bin/env python3
"""Drives twinguard-hub's service REST API with Microsoft's official Azure IoT Hub service SDK
(azure-iot-hub), an operator's tool nobody here wrote. The hub's CA comes from
REQUESTS_CA_BUNDLE, as for any Python tool that uses requests.

usage: service_client.py FLOW OWNER_CONNECTION_STRING_FILE [ARGS...]

FLOW is one of:
  agent    create a device and its azureiotsecurity module; wait for the test to start a real
           agent ("go" on standard input); change highPriorityMessageFrequency with
           update_module_twin and read the agent's reported properties back; a stale etag; an
           invalid value the agent rejects, then found by a query on the rejected status.
  fleet    250 modules paged with query_iot_hub; two agents (one tagged site=plant1)
           configured by module configurations: priority, deletion, metrics.
  raw      requests the SDK cannot make (refusals): one JSON line per case with the status.
  stats    the registry statistics, and a device created and read back (for a hub on port
           443, which SDKs other than Python's always use).

Each step is one JSON line {"step": ..., ...} on standard output, read by
crates/hub/tests/it/service.rs. Any exception is printed as {"step": "error", ...}, exit 1.
"""
import base64
import json
import os
import signal
import sys
import time
import traceback

CONFIG_KEY = "ms_iotn:urn_azureiot_Security_SecurityAgentConfiguration"
MODULE = "azureiotsecurity"


def report(step, **fields):
    fields["step"] = step
    print(json.dumps(fields), flush=True)


def wait_for_go():
    line = sys.stdin.readline().strip()
    if line != "go":
        raise RuntimeError("expected go on standard input, got %r" % line)


def poll(what, check, timeout=45):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise RuntimeError("timed out waiting for " + what)


def status_of(call):
    from msrest.exceptions import HttpOperationError

    try:
        call()
    except HttpOperationError as e:
        return e.response.status_code
    return 200


def agent_flow(owner_cs, device):
    from azure.iot.hub import IoTHubRegistryManager
    from azure.iot.hub.models import QuerySpecification, Twin, TwinProperties

    rm = IoTHubRegistryManager.from_connection_string(owner_cs)
    created = rm.create_device_with_sas(device, None, None, "enabled")
    report("device", deviceId=created.device_id, etag=created.etag, status=created.status)
    module = rm.create_module_with_sas(device, MODULE, None, None, None)
    report(
        "module",
        moduleId=module.module_id,
        primaryKey=module.authentication.symmetric_key.primary_key,
    )
    wait_for_go()

    def reported():
        return rm.get_module_twin(device, MODULE).properties.reported

    first = poll(
        "the agent's first report",
        lambda: reported().get("twinguard", {}).get("configurationStatus") == "applied" and reported(),
    )
    report("first-report", hp=first[CONFIG_KEY]["highPriorityMessageFrequency"])

    # The seed's tutorial step: a new highPriorityMessageFrequency through the module twin.
    twin = rm.get_module_twin(device, MODULE)
    patch = Twin(properties=TwinProperties(desired={CONFIG_KEY: {"highPriorityMessageFrequency": {"value": "PT2M"}}}))
    updated = rm.update_module_twin(device, MODULE, patch, twin.etag)
    report("updated", etag=updated.etag, desired=updated.properties.desired)
    applied = poll(
        "PT2M in the reported properties",
        lambda: reported()[CONFIG_KEY]["highPriorityMessageFrequency"] == {"value": "PT2M"} and reported(),
    )
    report("applied", reported=applied)

    # A stale etag: 412, nothing changed.
    stale = Twin(properties=TwinProperties(desired={CONFIG_KEY: {"highPriorityMessageFrequency": {"value": "PT9M"}}}))
    code = status_of(lambda: rm.update_module_twin(device, MODULE, stale, twin.etag))
    desired_after = rm.get_module_twin(device, MODULE).properties.desired
    report("stale", status=code, desired=desired_after)

    # An invalid value: stored (IoT Hub does not know the agent's rules), rejected by the agent.
    bad = Twin(properties=TwinProperties(desired={CONFIG_KEY: {"maxMessageSizeInBytes": {"value": 5}}}))
    rm.update_module_twin(device, MODULE, bad, "*")
    rejected = poll(
        "the agent's rejection",
        lambda: reported().get("twinguard", {}).get("configurationStatus") == "rejected" and reported(),
    )
    report("rejected", reported=rejected)
    query = QuerySpecification(
        query="SELECT * FROM devices.modules WHERE properties.reported.twinguard.configurationStatus = 'rejected'"
    )
    result = rm.query_iot_hub(query)
    report("query", items=[[t.device_id, t.module_id] for t in result.items], type=result.type)
    report("done")


def fleet_flow(owner_cs, count):
    from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager
    from azure.iot.hub.models import (
        Configuration,
        ConfigurationContent,
        ConfigurationMetrics,
        QuerySpecification,
        Twin,
    )

    rm = IoTHubRegistryManager.from_connection_string(owner_cs)
    cm = IoTHubConfigurationManager.from_connection_string(owner_cs)

    # Paging: `count` modules, read 100 at a time.
    rm.create_device_with_sas("fleet", None, None, "enabled")
    for i in range(count):
        rm.create_module_with_sas("fleet", "m%03d" % i, None, None, None)
    seen, pages, token = [], 0, None
    while True:
        result = rm.query_iot_hub(
            QuerySpecification(query="SELECT * FROM devices.modules WHERE deviceId = 'fleet'"), token, 100
        )
        pages += 1
        seen.extend(t.module_id for t in result.items)
        token = result.continuation_token
        if not token:
            break
    report("paged", pages=pages, count=len(seen), distinct=len(set(seen)))

    # Two agents: plant1 (tagged) and plant2.
    keys = {}
    for device, site in (("agent-plant1", "plant1"), ("agent-plant2", "plant2")):
        rm.create_device_with_sas(device, None, None, "enabled")
        module = rm.create_module_with_sas(device, MODULE, None, None, None)
        keys[device] = module.authentication.symmetric_key.primary_key
        if site == "plant1":
            twin = rm.get_module_twin(device, MODULE)
            rm.update_module_twin(device, MODULE, Twin(tags={"site": site}), twin.etag)
    report("agents", keys=keys)
    wait_for_go()

    def hp(device):
        reported = rm.get_module_twin(device, MODULE).properties.reported
        return reported.get(CONFIG_KEY, {}).get("highPriorityMessageFrequency", {}).get("value")

    poll("both agents' first reports", lambda: hp("agent-plant1") and hp("agent-plant2"))
    target = "from devices.modules where moduleId='%s' and tags.site='plant1'" % MODULE

    def configuration(cid, priority, frequency):
        return Configuration(
            id=cid,
            schema_version="1.0",
            target_condition=target,
            priority=priority,
            content=ConfigurationContent(
                module_content={
                    MODULE: {
                        "properties.desired." + CONFIG_KEY: {"highPriorityMessageFrequency": {"value": frequency}}
                    }
                }
            ),
            metrics=ConfigurationMetrics(
                queries={
                    "rejected": "SELECT deviceId FROM devices.modules WHERE "
                    "properties.reported.twinguard.configurationStatus = 'rejected'"
                }
            ),
        )

    low = cm.create_configuration(configuration("plant1-low", 10, "PT3M"))
    report("low-created", etag=low.etag)
    poll("PT3M on plant1", lambda: hp("agent-plant1") == "PT3M")
    cm.create_configuration(configuration("plant1-high", 20, "PT4M"))
    poll("PT4M on plant1", lambda: hp("agent-plant1") == "PT4M")
    high = cm.get_configuration("plant1-high")
    low = cm.get_configuration("plant1-low")
    report(
        "high-wins",
        plant1=hp("agent-plant1"),
        plant2=hp("agent-plant2"),
        plant2_desired=rm.get_module_twin("agent-plant2", MODULE).properties.desired,
        high=high.system_metrics.results,
        low=low.system_metrics.results,
        metrics=high.metrics.results,
        listed=sorted(c.id for c in cm.get_configurations()),
    )
    cm.delete_configuration("plant1-high")
    poll("PT3M again on plant1", lambda: hp("agent-plant1") == "PT3M")
    report("high-deleted", plant1=hp("agent-plant1"), low=cm.get_configuration("plant1-low").system_metrics.results)
    cm.delete_configuration("plant1-low")
    time.sleep(1)
    report(
        "all-deleted",
        plant1=hp("agent-plant1"),
        desired=rm.get_module_twin("agent-plant1", MODULE).properties.desired,
        listed=[c.id for c in cm.get_configurations()],
    )
    stats = rm.get_device_registry_statistics()
    service = rm.get_service_statistics()
    report(
        "statistics",
        total=stats.total_device_count,
        enabled=stats.enabled_device_count,
        connected=service.connected_device_count,
    )
    report("done")


def stats_flow(owner_cs):
    from azure.iot.hub import IoTHubRegistryManager

    rm = IoTHubRegistryManager.from_connection_string(owner_cs)
    rm.create_device_with_sas("dev-443", None, None, "enabled")
    stats = rm.get_device_registry_statistics()
    report("stats", total=stats.total_device_count, device=rm.get_device("dev-443").device_id)
    report("done")


def raw_flow(owner_cs, base, device, reader_cs):
    """Requests with requests (the SDK's own HTTP library), to send what the SDK never sends."""
    import requests
    from azure.iot.hub.sastoken import SasToken

    def parse(cs):
        return dict(p.split("=", 1) for p in cs.split(";"))

    owner = parse(owner_cs)
    reader = parse(reader_cs)
    host = owner["HostName"]

    def token(key, name=None, ttl=3600, uri=host):
        return str(SasToken(uri, key, name, ttl))

    good = token(owner["SharedAccessKey"], owner["SharedAccessKeyName"])
    twin_path = "/twins/%s/modules/%s?api-version=2021-04-12" % (device, MODULE)

    def call(name, method, path, auth, body=None, data=None, headers=None):
        h = {"Content-Type": "application/json"}
        if auth is not None:
            h["Authorization"] = auth
        h.update(headers or {})
        if body is not None:
            data = json.dumps(body)
        r = requests.request(method, base + path, headers=h, data=data, timeout=30)
        try:
            answer = r.json()
        except ValueError:
            answer = None
        report("case", name=name, status=r.status_code, body=answer, retry=r.headers.get("retry-after"))

    wrong_key = base64.b64encode(b"w" * 32).decode()
    call("wrong key", "GET", twin_path, token(wrong_key, "iothubowner"))
    call("expired token", "GET", twin_path, token(owner["SharedAccessKey"], "iothubowner", ttl=-10))
    device_key = sys.stdin.readline().strip()
    call(
        "device token",
        "GET",
        twin_path,
        token(device_key, None, uri="%s/devices/%s/modules/%s" % (host, device, MODULE)),
    )
    call("no token", "GET", twin_path, None)
    call(
        "registryRead writes",
        "PATCH",
        twin_path,
        token(reader["SharedAccessKey"], reader["SharedAccessKeyName"]),
        body={"properties": {"desired": {"x": 1}}},
    )
    call(
        "registryRead reads",
        "GET",
        "/devices/%s?api-version=2021-04-12" % device,
        token(reader["SharedAccessKey"], reader["SharedAccessKeyName"]),
    )
    call("malformed JSON", "PATCH", twin_path, good, data='{"properties": {"desired": ')
    call("40 KB desired", "PATCH", twin_path, good, body={"properties": {"desired": {"big": "x" * 40960}}})
    deep = 1
    for _ in range(11):
        deep = {"k": deep}
    call("depth 11", "PATCH", twin_path, good, body={"properties": {"desired": {"d": deep}}})
    call("bad member name", "PATCH", twin_path, good, body={"properties": {"desired": {"a.b": 1}}})
    call("1 MB body", "PATCH", twin_path, good, data="{" + " " * (1024 * 1024) + "}")
    call("unknown path", "GET", "/nothing/here?api-version=2021-04-12", good)
    call("direct method", "POST", "/twins/%s/methods?api-version=2021-04-12" % device, good, body={})
    call("any api-version", "GET", "/devices/%s?api-version=1999-01-01" % device, good)
    call("query syntax", "POST", "/devices/query?api-version=2021-04-12", good, body={"query": "SELECT * FROM devices WHERE tags.a = "})
    call("duplicate device", "PUT", "/devices/%s?api-version=2021-04-12" % device, good, body={"deviceId": device})
    call("no such module", "GET", "/twins/%s/modules/nope?api-version=2021-04-12" % device, good)
    # Failed authentications until the source is throttled; then even a good token waits.
    for _ in range(25):
        r = requests.get(base + twin_path, headers={"Authorization": token(wrong_key, "iothubowner")}, timeout=30)
        if r.status_code == 429:
            break
    call("throttled", "GET", twin_path, good)
    report("done")


def main():
    flow, owner_file = sys.argv[1:3]
    owner_cs = open(owner_file).read().strip()
    signal.alarm(240)
    try:
        if flow == "agent":
            agent_flow(owner_cs, sys.argv[3])
        elif flow == "fleet":
            fleet_flow(owner_cs, int(sys.argv[3]))
        elif flow == "stats":
            stats_flow(owner_cs)
        elif flow == "raw":
            raw_flow(owner_cs, sys.argv[3], sys.argv[4], open(sys.argv[5]).read().strip())
        else:
            raise RuntimeError("unknown flow " + flow)
    except BaseException as e:  # noqa: B902 - every failure is reported to the test
        report("error", error=repr(e), traceback=traceback.format_exc())
        sys.exit(1)
    # The registry manager's AMQP client (never used here) may block interpreter exit.
    os._exit(0)


if __name__ == "__main__":
    main()
