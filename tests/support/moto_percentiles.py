"""Percentile statistics (p50, p99.9, ...) for moto's CloudWatch GetMetricData.

moto 5.2.5 computes Sum, Average, Minimum, Maximum and SampleCount but answers
a percentile statistic with an internal error. CloudWatch computes percentiles
from the raw values a datum carries (Values/Counts, or Value); moto keeps those
values (Values/Counts expanded one entry per count), so this patch computes the
nearest-rank percentile over them. Data sent only as StatisticValues has no
values to rank, as in CloudWatch, and yields no percentile.
"""
import math

from moto.cloudwatch import models


def install() -> None:
    original = models.Statistics.get_statistics_for_type

    def get_statistics_for_type(self, stat):
        if isinstance(stat, str) and stat.startswith("p"):
            try:
                p = float(stat[1:])
            except ValueError:
                return original(self, stat)
            values = sorted(self.metric_single_values_list)
            if not values or not 0 <= p <= 100:
                return None
            rank = max(1, math.ceil(p / 100 * len(values)))
            return values[rank - 1]
        return original(self, stat)

    models.Statistics.get_statistics_for_type = get_statistics_for_type
