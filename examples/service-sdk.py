#!/usr/bin/env python3
"""Sets an agent's highPriorityMessageFrequency through IoT Hub's service API with Microsoft's
service SDK (azure-iot-hub), the seed's tutorial step, and waits for the agent's verdict in its
reported properties. Works against Azure IoT Hub and against twinguard-hub alike.

usage: service-sdk.py SERVICE_CONNECTION_STRING DEVICE_ID FREQUENCY   (e.g. PT2M)

Needs `pip install azure-iot-hub==2.7.0 six`; for twinguard-hub, REQUESTS_CA_BUNDLE names its
CA file. Exit 0 applied, 1 rejected (the agent's errors are printed), 3 no answer in 60 s.
"""
import sys
import time

from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import Twin, TwinProperties

CONFIG_KEY = "ms_iotn:urn_azureiot_Security_SecurityAgentConfiguration"
MODULE = "azureiotsecurity"


def main():
    connection_string, device, frequency = sys.argv[1:4]
    registry = IoTHubRegistryManager.from_connection_string(connection_string)
    twin = registry.get_module_twin(device, MODULE)
    patch = {CONFIG_KEY: {"highPriorityMessageFrequency": {"value": frequency}}}
    updated = registry.update_module_twin(
        device, MODULE, Twin(properties=TwinProperties(desired=patch)), twin.etag
    )
    version = updated.properties.desired["$version"]
    print("desired $version %d: highPriorityMessageFrequency %s" % (version, frequency), flush=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        status = registry.get_module_twin(device, MODULE).properties.reported.get("twinguard", {})
        seen = status.get("lastDesiredVersion", status.get("desiredVersion", 0))
        if seen >= version:
            if status.get("configurationStatus") == "applied":
                print("applied: the agent reports desired $version %d in force" % seen)
                return 0
            print("rejected: " + "; ".join(status.get("errors", [])))
            return 1
        time.sleep(0.5)
    print("no answer from the agent in 60 s (is it connected?)")
    return 3


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # The registry manager holds an (unused) AMQP client whose teardown may wait.
    import os

    os._exit(code)
