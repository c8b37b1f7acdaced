"""``wsdm-serve rank``: models' answers in, a leaderboard with confidence intervals out.

- ``answers``      answers tables and folders (table, AlpacaEval, Arena-Hard), checked
- ``pairs``        the scheduled pairs' texts and their keys; judgements oriented back to each pair
- ``judging``      the one door to the judge (predict's Judge, or its Ray job)
- ``store``        ``--work-dir``: finished judgements by pair and judge
- ``run``          the schedule (``compare``), judging what is missing chunk by chunk
- ``judgements``   ``--judgements FILE``: the judge's judgements or people's votes, checked
- ``boards``       judgements -> Bradley-Terry boards, overall and per language and category
- ``report``       leaderboard.csv / .json / .png, judgements.parquet, the markdown table
"""
