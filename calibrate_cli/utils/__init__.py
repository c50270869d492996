"""Plumbing shared by the commands: atomic file writes (:mod:`.atomic`), folder locks
(:mod:`.lock`), progress lines (:mod:`.progress`) and the canonical text of a number
(:mod:`.numbers`)."""
