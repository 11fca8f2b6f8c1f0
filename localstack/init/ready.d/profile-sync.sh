#!/usr/bin/env bash
# LocalStack init hook (docker-compose: mount ./localstack/init/ready.d to
# /etc/localstack/init/ready.d): creates what `profile-sync bootstrap` creates, with awslocal —
# the DynamoDB table (pk/sk, GSI by_email_index on email_index, TTL on expires_at) and a
# development KMS key behind the alias. Idempotent: existing resources are left as they are.
# Point pipelines/aws-local.yaml's endpoints at http://localhost:4566. The blind-index key is
# created by the first `profile-sync run` (or `bootstrap`) that needs it.
set -euo pipefail

TABLE="${PROFILE_SYNC_TABLE:-profile-sync-dev}"
ALIAS="${PROFILE_SYNC_KEY_ALIAS:-alias/profile-sync-dev}"

if ! awslocal dynamodb describe-table --table-name "$TABLE" >/dev/null 2>&1; then
  awslocal dynamodb create-table \
    --table-name "$TABLE" \
    --billing-mode PAY_PER_REQUEST \
    --attribute-definitions AttributeName=pk,AttributeType=S AttributeName=sk,AttributeType=S \
        AttributeName=email_index,AttributeType=S \
    --key-schema AttributeName=pk,KeyType=HASH AttributeName=sk,KeyType=RANGE \
    --global-secondary-indexes \
        'IndexName=by_email_index,KeySchema=[{AttributeName=email_index,KeyType=HASH}],Projection={ProjectionType=KEYS_ONLY}' \
    >/dev/null
  awslocal dynamodb wait table-exists --table-name "$TABLE"
  echo "profile-sync: created table $TABLE"
fi

if ! awslocal dynamodb describe-time-to-live --table-name "$TABLE" \
    --query 'TimeToLiveDescription.TimeToLiveStatus' --output text | grep -q ENABL; then
  awslocal dynamodb update-time-to-live --table-name "$TABLE" \
    --time-to-live-specification Enabled=true,AttributeName=expires_at >/dev/null
fi

if ! awslocal kms describe-key --key-id "$ALIAS" >/dev/null 2>&1; then
  KEY_ID=$(awslocal kms create-key --description "profile-sync development key" \
    --query KeyMetadata.KeyId --output text)
  awslocal kms create-alias --alias-name "$ALIAS" --target-key-id "$KEY_ID"
  echo "profile-sync: created KMS key $KEY_ID as $ALIAS"
fi
