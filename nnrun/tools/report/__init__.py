"""`nnrun report`'s algorithms: find run folders and read them (:mod:`.runs`), the recipe keys whose
values differ (:mod:`.diff`), the curves of each run (:mod:`.curves`), and the PNG and HTML pages
(:mod:`.render`). Reading a run needs no torch: only its text files and TensorBoard events."""
