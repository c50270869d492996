"""The lookup tables: what each table holds and how it is written (:mod:`.build`), and how its
rows are computed across worker processes (:mod:`.run`)."""
