"""The inputs of the fused assets, declared as external assets (group `upstream`, never materialised here).

The three embedding prefixes, the metadata horizon and the text stage's DB: each fused asset depends on
them, so the lineage shows where its vectors come from and the metadata names each input's S3 path
pattern. The bucket and root are run config, so the paths are patterns; the layout module builds them.
"""

from __future__ import annotations

from dagster import AssetSpec, MetadataValue

from clipfarm_fusion.core.layout import MODALITIES, Layout

_PATTERN = Layout("<root>")
_S3 = "s3://<bucket>/"
UPSTREAM_SPECS = [
    *(
        AssetSpec(
            ["embeddings", modality],
            description=f"One {modality} embedding per video (.npy, float32), written by the upstream "
            f"{modality} embedding stage; a video whose object is missing is not fused that day.",
            metadata={
                "path_pattern": MetadataValue.text(_S3 + _PATTERN.embedding_key(modality, "<video_id>")),
                "prefix": MetadataValue.text(_S3 + _PATTERN.embedding_prefix(modality)),
            },
            group_name="upstream",
            kinds={"s3", "numpy"},
        )
        for modality in MODALITIES
    ),
    AssetSpec(
        "metadata_horizon",
        description="The videos to fuse (video_id, url, captured_at): a day's run reads the rows captured "
        "on or before its date. The resource's `metadata` field can point elsewhere.",
        metadata={"path_pattern": MetadataValue.text(_S3 + _PATTERN.metadata_key())},
        group_name="upstream",
        kinds={"s3", "csv"},
    ),
    AssetSpec(
        "text_stage_state",
        description="The text downloader's SQLite snapshot: whether a video's text is still owed (the item "
        "waits) or will never come (fused with a placeholder). The resource's `text_state` field can "
        "point elsewhere.",
        metadata={"path_pattern": MetadataValue.text(_S3 + _PATTERN.text_state_key())},
        group_name="upstream",
        kinds={"s3", "sqlite"},
    ),
]
