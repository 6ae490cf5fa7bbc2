"""`nemo-c-transfer`: one cluster's NeMo-C mask zeroed for every prompt, whatever its own cluster.

The FB-Mem paper's transfer experiment: generate the prompts of the other clusters with cluster C's
mask and see how much it still changes them, against the distance between the cluster centroids
(`fbmem nemo-c transfer`, sql/59_nemo_c_transfer.sql). Prompts of cluster C itself get their own mask,
as under `nemo-c`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from fbmem_data.errors import InputError
from fbmem_data.mitigate.nemo import NemoClusterMitigation, _group

if TYPE_CHECKING:
    from fbmem_data.workspace import Workspace


class NemoClusterTransferMitigation(NemoClusterMitigation):
    """Zero cluster `cluster`'s mask (of cluster_masks `mask`) for every prompt.

    Args:
        cluster: the source cluster whose mask is applied.
        mask: cluster_masks.mask_id; None picks as `nemo-c` does (pass it explicitly for stable ids).
    """

    name = "nemo-c-transfer"
    contract_params: ClassVar[dict[str, Any]] = {"cluster": 0}

    def __init__(self, cluster: int, mask: str | None = None) -> None:
        super().__init__(mask=mask)
        try:
            self.cluster = int(cluster)
        except (TypeError, ValueError) as exc:
            raise InputError(f"nemo-c-transfer: cluster must be an integer, got {cluster!r}") from exc

    def params(self) -> dict[str, Any]:
        return {"mask": self.mask, "cluster": self.cluster}

    def prepare(self, ws: Workspace | None, model_id: str, prompt_ids: Sequence[str]) -> None:
        super().prepare(ws, model_id, prompt_ids)  # resolves the mask as nemo-c does
        assert ws is not None  # the parent raised otherwise
        rows = ws.sql(
            "SELECT cluster, layer, neuron FROM cluster_masks WHERE mask_id = $mask AND cluster = $c ORDER BY 2, 3",
            {"mask": self.mask, "c": self.cluster},
        ).to_pylist()
        if not rows:
            have = ws.sql(
                "SELECT DISTINCT cluster FROM cluster_masks WHERE mask_id = $mask ORDER BY 1",
                {"mask": self.mask},
            )
            raise InputError(
                f"mask {self.mask} has no neurons for cluster {self.cluster}",
                hint=f"clusters with a mask: {have.column('cluster').to_pylist()}",
            )
        neurons = _group(rows, "cluster")[self.cluster]
        self._neurons = {pid: neurons for pid in prompt_ids}
