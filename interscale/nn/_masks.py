"""The keys each query of a sample may attend to, built block by block (never as an S x S mask).

:class:`KeyMask` describes one sample's scope; :func:`dense_scope_mask` builds the whole mask
and is the dense reference the tests compare the blocked kernels against.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KeyMask", "dense_scope_mask"]


class KeyMask:
    """Additive key masks for the rows of one sample's sequence, built on demand.

    Parameters
    ----------
    n_cells
        Number of cells ``S`` of the sample; the sequence has ``S + 1`` positions (CLS last).
    nbr_ptr, nbr_src
        Optional CSR description of the neighbours to exclude: the (local) sources of cell ``i``
        are ``nbr_src[nbr_ptr[i]:nbr_ptr[i + 1]]``.  Given for ``long_range``, None for ``full``.
    """

    def __init__(
        self, n_cells: int, nbr_ptr: Tensor | None = None, nbr_src: Tensor | None = None
    ) -> None:
        self.n_cells = int(n_cells)
        self.nbr_ptr = nbr_ptr
        self.nbr_src = nbr_src

    def _masked(self, start: int, stop: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Row offsets (relative to ``start``) and columns of the excluded keys of rows
        ``start:stop``."""
        cell_stop = min(stop, self.n_cells)
        if cell_stop <= start:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty
        rows = torch.arange(start, cell_stop, device=device)
        r, c = rows - start, rows
        if self.nbr_ptr is not None and self.nbr_src is not None:
            lo = int(self.nbr_ptr[start])
            hi = int(self.nbr_ptr[cell_stop])
            counts = self.nbr_ptr[start + 1 : cell_stop + 1] - self.nbr_ptr[start:cell_stop]
            tgt = torch.repeat_interleave(torch.arange(cell_stop - start, device=device), counts)
            r = torch.cat([r, tgt])
            c = torch.cat([c, self.nbr_src[lo:hi]])
        return r, c

    def block(self, start: int, stop: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Additive mask for the query rows ``start:stop`` of the sequence.

        Parameters
        ----------
        start, stop
            Row range (positions in the sequence, CLS is position ``n_cells``).
        dtype, device
            Of the returned mask.

        Returns
        -------
        Tensor
            ``[stop - start, n_cells + 1]`` with ``0`` for allowed keys and ``-inf`` otherwise.
        """
        mask = torch.zeros(stop - start, self.n_cells + 1, dtype=dtype, device=device)
        r, c = self._masked(start, stop, device)
        mask[r, c] = float("-inf")
        return mask

    def iter_blocks(self, length: int, block_size: int, dtype: torch.dtype, device: torch.device):
        """Yield ``(start, stop, mask)`` for consecutive row blocks, reusing one mask buffer.

        Writing and clearing only the excluded entries of one buffer avoids allocating (and
        zero-filling) a fresh ``[block, L]`` mask per block.  A yielded mask is valid until the
        next iteration.

        Parameters
        ----------
        length
            Number of query rows (``n_cells + 1``).
        block_size
            Rows per block.
        dtype, device
            Of the masks.

        Yields
        ------
        tuple
            ``(start, stop, mask [stop - start, n_cells + 1])``.
        """
        buf = torch.zeros(min(block_size, length), self.n_cells + 1, dtype=dtype, device=device)
        for start in range(0, length, block_size):
            stop = min(start + block_size, length)
            r, c = self._masked(start, stop, device)
            buf[r, c] = float("-inf")
            yield start, stop, buf[: stop - start]
            buf[r, c] = 0.0


def dense_scope_mask(key_mask: KeyMask, device: torch.device | None = None) -> Tensor:
    """Boolean ``[L, L]`` mask of allowed keys (True = attend); for tests and small inputs.

    Parameters
    ----------
    key_mask
        Mask description of one sample.
    device
        Device of the result.

    Returns
    -------
    Tensor
        Boolean matrix, row = query position, column = key position (CLS last).
    """
    block = key_mask.block(0, key_mask.n_cells + 1, torch.float32, device or torch.device("cpu"))
    return block == 0
