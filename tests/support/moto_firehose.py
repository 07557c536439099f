"""Service defaults in moto's Firehose DescribeDeliveryStream answer.

Firehose always describes an S3 destination with CompressionFormat, BufferingHints and
EncryptionConfiguration, filling in its defaults when the stream was created without
them. moto 5.2.5 echoes only what the creator sent. The AWS SDK for Rust (since its
schema-based deserializers) rejects a description without these required members, so
this patch adds Firehose's documented defaults where moto left them out.
"""
import copy

from moto.firehose import models

S3_DEFAULTS = {
    "CompressionFormat": "UNCOMPRESSED",
    "BufferingHints": {"SizeInMBs": 5, "IntervalInSeconds": 300},
    "EncryptionConfiguration": {"NoEncryptionConfig": "NoEncryption"},
}


def _fill(description: dict) -> None:
    for key in ("S3DestinationDescription", "ExtendedS3DestinationDescription"):
        dest = description.get(key)
        if isinstance(dest, dict):
            for field, default in S3_DEFAULTS.items():
                dest.setdefault(field, copy.deepcopy(default))


def install() -> None:
    original = models.FirehoseBackend.describe_delivery_stream

    def describe_delivery_stream(self, delivery_stream_name):
        result = copy.deepcopy(original(self, delivery_stream_name))
        for destination in result["DeliveryStreamDescription"].get("Destinations", []):
            _fill(destination)
        return result

    models.FirehoseBackend.describe_delivery_stream = describe_delivery_stream
