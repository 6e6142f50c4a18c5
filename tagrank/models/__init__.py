"""Ranked-tag methods: one file each, all on :class:`tagrank.models.base.RankedTagger`."""
