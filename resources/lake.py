"""The S3 lake (SeaweedFS locally, MinIO or AWS in production) holding Delta tables."""

from __future__ import annotations

import boto3
import dagster as dg
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from pydantic import Field


class LakeResource(dg.ConfigurableResource):
    endpoint_url: str = Field(description="S3 endpoint, e.g. http://minio:9000")
    access_key_id: str = Field(description="From AWS_ACCESS_KEY_ID")
    secret_access_key: str = Field(description="From AWS_SECRET_ACCESS_KEY")
    region: str = Field("us-east-1", description="S3 region")
    bucket: str = Field("nautilus-lake", description="Bucket holding the Delta tables")

    @property
    def storage_options(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "AWS_ALLOW_HTTP": str(self.endpoint_url.startswith("http://")).lower(),
        }

    def uri(self, table: str) -> str:
        return f"s3://{self.bucket}/{table}"

    def table(self, table: str) -> DeltaTable | None:
        try:
            return DeltaTable(self.uri(table), storage_options=self.storage_options)
        except TableNotFoundError:
            return None

    def s3_client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def ensure_buckets(self, *buckets: str) -> None:
        s3 = self.s3_client()
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for name in {self.bucket, *buckets} - existing:
            s3.create_bucket(Bucket=name)
