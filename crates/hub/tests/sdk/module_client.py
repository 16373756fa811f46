#!/usr/bin/env python3
"""Drives twinguard-hub with Microsoft's official Azure IoT device SDK (azure-iot-device),
as a module client, so the hub's fidelity is checked by a client nobody here wrote.

usage: module_client.py CONNECTION_STRING_FILE CA_FILE MESSAGE_FILE

Steps, each reported on standard output as one JSON line {"step": ..., ...} that the Rust test
(crates/hub/tests/it/sdk.rs) reads:
  connected      the client connected (TLS to HostName:8883, SAS token from the key)
  twin           get_twin() answered (the whole twin)
  reported       patch_twin_reported_properties() was confirmed
  waiting        subscribed to desired patches; the test now patches the desired properties
  desired        the desired-properties patch arrived (the patch, with $version)
  sent           a message marked as a security message was sent (PUBACK received)
  twin-after     get_twin() again
  done           disconnected cleanly
Exit 0 when every step passed; any exception is printed as {"step": "error", ...}, exit 1.
"""
import json
import queue
import signal
import sys
import traceback

from azure.iot.device import IoTHubModuleClient, Message


def report(step, **fields):
    fields["step"] = step
    print(json.dumps(fields), flush=True)


def main():
    cs_file, ca_file, message_file = sys.argv[1:4]
    connection_string = open(cs_file).read().strip()
    ca = open(ca_file).read()
    body = open(message_file).read()

    # A hung step must not hang the test: give up after 120 s in all.
    signal.alarm(120)

    client = IoTHubModuleClient.create_from_connection_string(
        connection_string, server_verification_cert=ca, connection_retry=False
    )
    client.connect()
    report("connected")

    twin = client.get_twin()
    report("twin", twin=twin)

    reported = {"sdk": {"language": "python", "step": 1}, "toBeDeleted": True}
    client.patch_twin_reported_properties(reported)
    client.patch_twin_reported_properties({"toBeDeleted": None})
    report("reported", patch=reported)

    patches = queue.Queue()
    client.on_twin_desired_properties_patch_received = patches.put
    report("waiting")
    patch = patches.get(timeout=60)
    report("desired", patch=patch)

    message = Message(body, content_encoding="utf-8", content_type="application/json")
    message.set_as_security_message()
    message.message_id = "sdk-message-1"
    message.custom_properties["origin"] = "azure-iot-device"
    client.send_message(message)
    report("sent")

    report("twin-after", twin=client.get_twin())
    client.shutdown()
    report("done")


if __name__ == "__main__":
    try:
        main()
    except BaseException as e:  # noqa: BLE001 - every failure is reported to the test
        report("error", error=repr(e), trace=traceback.format_exc())
        sys.exit(1)
