"""`wsdm-train prepare`: the raw tables read, checked and split into folds, and every model's sets written.

:mod:`.sources` reads the three tables into labelled rows, :mod:`.overlap` finds rows that are the
same pair, :mod:`.folds` splits them (a repeated pair kept in one fold), :mod:`.encode` truncates,
renders and tokenizes, :mod:`.sets` writes the Parquet files and :mod:`.prepare` runs it all as a
resumable job with a :mod:`.manifest`.
"""
