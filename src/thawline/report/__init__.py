"""Everything read from run files, with no torch: metrics and predictions.csv, bootstrap intervals, the comparison
table, figures, the advisor's rules and advise.json, report.html."""
