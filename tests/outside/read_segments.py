"""The README/ARCHITECTURE recipe for a personalization engine, run with boto3 (no
profile-sync code): read a user's derived segments from the DynamoDB table.

usage: read_segments.py ENDPOINT TABLE USER_ID  ->  one JSON line
"""
import json
import sys

import boto3

endpoint, table, user = sys.argv[1:4]
client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
# `segments` is a DynamoDB reserved word: it needs an expression attribute name.
item = client.get_item(
    TableName=table,
    Key={"pk": {"S": f"USER#{user}"}, "sk": {"S": "PROFILE"}},
    ProjectionExpression="#segments, residency_zone, country, version, deleted",
    ExpressionAttributeNames={"#segments": "segments"},
).get("Item", {})
print(json.dumps({
    "segments": sorted(s["S"] for s in item.get("segments", {}).get("L", [])),
    "residency_zone": item.get("residency_zone", {}).get("S"),
    "country": item.get("country", {}).get("S"),
    "version": int(item["version"]["N"]) if "version" in item else None,
    "deleted": item.get("deleted", {}).get("BOOL"),
    "attributes": sorted(item.keys()),
}))
