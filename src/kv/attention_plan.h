// The attention inputs of one batch over one KV group, decided once per forward pass from the
// sequences' page tables and policies, and used by every layer of the group: the CSR of page
// tables, each row's slot range, and StreamingLLM's sink pass. This is where a policy's
// reading rule becomes plain kernel input (attention.h) — the kernel never sees the policy.
//
// Rows (batch tokens) are given by their sequence and logical slot (where their K/V is
// written). Row r of sequence s at logical slot L attends:
//   dense, Quest, H2O      table slots [0, table_slot(L)]
//   window:size=W          [table_slot(L - W + 1), table_slot(L)]
//   streaming:sinks=S,size=W
//       while L - W + 1 <= S: [0, table_slot(L)] (nothing has left the cache yet);
//       then the window as above, plus a sink pass over table slots [0, S) with the query
//       rotated at the in-cache position S + W - 1 instead of L. Keys are stored rotated at
//       their original positions, so window distances already equal in-cache distances; only
//       the sinks need theirs, S + W - 1 - s, and rotating the query for the sink pass gives
//       exactly that without rewriting any key (pages stay immutable and shareable, and every
//       row of a chunk gets its own distances). The two states merge through their LSE.
//   h2o:heavy=H,recent=R  reads like dense: its slots are the region kv/h2o.h keeps, the
//       chunk's tokens after the kept ones; the plan lists its rows for score accumulation.
//   quest:budget=B  reads like dense here; a decode row (its sequence's only row in the pass,
//       not a prompt token when prompt_rows are given) whose [0, table_slot(L)] spans more
//       than ⌊B / page_size⌋ pages is a Quest row: from
//       layer 2 on, kv/quest.h narrows what each of its KV heads reads to ⌊B / page_size⌋
//       pages (prefill chunks, the first two layers and short sequences stay dense).
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "kv/kv_cache.h"

namespace kvs {

struct attention_plan {
    // CSR over the sequences of the batch, in order of first appearance.
    std::vector<int32_t> page_indptr;  // (n_seq + 1)
    std::vector<int32_t> page_ids;     // (page_indptr[n_seq])
    std::vector<int32_t> q_seq;        // (n) CSR entry of each row
    std::vector<int32_t> q_kv_begin;   // (n) first table slot each row reads
    std::vector<int32_t> q_kv_len;     // (n) one past the last
    bool any_begin = false;            // some row starts past slot 0 (q_kv_begin is needed)
    // Sink pass: rows that also attend their sequence's sink slots [0, sink_len) with the query
    // rotated at sink_pos.
    std::vector<int32_t> sink_rows;    // (n_sink) batch rows
    std::vector<int32_t> sink_pos;     // (n_sink) RoPE position of the query for the sink pass
    std::vector<int32_t> sink_len;     // (n_sink) sink slots
    std::vector<int32_t> sink_q_seq;   // (n_sink) CSR entry (= q_seq of the row)
    // Quest rows: batch rows and the pages each KV head of theirs reads (⌊B / page_size⌋, the
    // newest included).
    std::vector<int32_t> quest_rows;   // (n_quest)
    std::vector<int32_t> quest_pages;  // (n_quest)
    // H2O: the CSR entries of H2O sequences, their rows (every row of such a sequence, grouped
    // by entry, in batch order), their kv sequence ids and the slots their pass fills.
    std::vector<int32_t> h2o_entries;     // (n_h2o)
    std::vector<int32_t> h2o_row_indptr;  // (n_h2o + 1) into h2o_rows
    std::vector<int32_t> h2o_rows;        // batch rows
    std::vector<int32_t> h2o_seqs;        // (n_h2o) kv sequence ids
    std::vector<int64_t> h2o_filled;      // (n_h2o) one past the highest slot written
    std::vector<int32_t> rows_of_entry;  // scratch: rows per CSR entry
    std::vector<int32_t> seq_index;    // scratch: kv sequence id -> CSR entry (-1 if absent)
};

// Builds the plan for n rows (seq_ids, slots: (n)). Fails if a row's sequence does not exist or
// does not hold its slot (or its window).
// prompt_rows (n, or null): rows that are prompt tokens (never Quest rows; batch::prompt).
status plan_attention(int64_t n, const int32_t* seq_ids, const int32_t* slots, const kv_cache& kv, attention_plan& out,
                      const uint8_t* prompt_rows = nullptr);

}  // namespace kvs
